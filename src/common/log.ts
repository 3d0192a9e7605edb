/** Structured JSON logs, one object per line on stderr. Callers never pass secrets in fields. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error'
export type Log = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void

const ORDER: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 }

export function jsonLogger(
  min: LogLevel,
  component: string,
  write: (line: string) => void = (l) => process.stderr.write(l),
): Log {
  return (level, msg, fields) => {
    if (ORDER[level] < ORDER[min]) return
    write(
      `${JSON.stringify({ time: new Date().toISOString(), level, component, msg, ...fields })}\n`,
    )
  }
}

export const silentLog: Log = () => undefined
