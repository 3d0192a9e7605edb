/**
 * Structured logs: JSON lines (default) or SPIRE's logfmt-style text, on stderr or appended to a
 * file that SIGHUP reopens (logrotate). Callers never pass secrets in fields. A log write never
 * throws: a full disk must not stop the agent from serving, so failed lines are counted and said
 * once on stderr.
 */
import { closeSync, constants, openSync, writeSync } from 'node:fs'
import { SpiffeEdgeError } from '../errors.js'

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'
export type Log = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void
export type LogFormat = 'json' | 'text'
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error']

const ORDER: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 }

export interface LogConfig {
  readonly level: LogLevel
  readonly format: LogFormat
  /** Absolute path; absent: stderr. */
  readonly file?: string
}

export function jsonLogger(
  min: LogLevel,
  component: string,
  write: (line: string) => void = (l) => process.stderr.write(l),
): Log {
  return (level, msg, fields) => {
    if (ORDER[level] < ORDER[min]) return
    write(formatLine('json', level, component, msg, fields))
  }
}

function textValue(v: unknown): string {
  const s = typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v))
  return /^[\w./:@+-]+$/.test(s) ? s : JSON.stringify(s)
}

function formatLine(
  format: LogFormat,
  level: LogLevel,
  component: string,
  msg: string,
  fields?: Record<string, unknown>,
): string {
  const time = new Date().toISOString()
  if (format === 'json') return `${JSON.stringify({ time, level, component, msg, ...fields })}\n`
  // logrus's text layout, as SPIRE writes it: time="…" level=info msg="…" key=value
  const rest = Object.entries(fields ?? {})
    .map(([k, v]) => ` ${k}=${textValue(v)}`)
    .join('')
  return `time=${JSON.stringify(time)} level=${level} component=${component} msg=${JSON.stringify(msg)}${rest}\n`
}

/** A logger whose level can change at run time (`logger set`) and whose file SIGHUP reopens. */
export class Logger {
  readonly log: Log
  private min: LogLevel
  private readonly configured: LogLevel
  private fd: number | undefined
  private dropped = 0
  private readonly stderr: (line: string) => void

  private readonly config: LogConfig
  private readonly component: string

  constructor(
    config: LogConfig,
    component: string,
    stderr: (line: string) => void = (l) => process.stderr.write(l),
  ) {
    this.config = config
    this.component = component
    this.min = config.level
    this.configured = config.level
    this.stderr = stderr
    if (config.file !== undefined) {
      try {
        this.fd = openLogFile(config.file)
      } catch (err) {
        throw new SpiffeEdgeError(
          'ERR_LOG_FILE',
          `cannot open log_file ${config.file}: ${(err as Error).message}`,
          {
            remedy:
              'create its directory and let this user write there (a symlink is refused), or remove log_file to log on stderr',
            cause: err,
          },
        )
      }
    }
    this.log = (level, msg, fields) => {
      if (ORDER[level] < ORDER[this.min]) return
      this.write(formatLine(this.config.format, level, this.component, msg, fields))
    }
  }

  get level(): LogLevel {
    return this.min
  }

  setLevel(level: LogLevel): void {
    this.min = level
  }

  /** Back to the level the config set. */
  resetLevel(): void {
    this.min = this.configured
  }

  /** After logrotate moved the file: write to a new one at the same path. */
  reopen(): void {
    if (this.config.file === undefined) return
    try {
      const fd = openLogFile(this.config.file)
      if (this.fd !== undefined) closeSync(this.fd)
      this.fd = fd
    } catch (err) {
      this.stderr(`log: cannot reopen ${this.config.file}: ${(err as Error).message}\n`)
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd)
    this.fd = undefined
  }

  private write(line: string): void {
    if (this.fd === undefined) {
      this.stderr(line)
      return
    }
    try {
      writeSync(this.fd, line)
      if (this.dropped > 0) {
        writeSync(
          this.fd,
          formatLine(this.config.format, 'warn', this.component, 'log lines were lost', {
            lost: this.dropped,
          }),
        )
        this.dropped = 0
      }
    } catch (err) {
      // ENOSPC, EIO: keep running; say it once on stderr, count the rest.
      if (this.dropped === 0)
        this.stderr(`log: cannot write ${this.config.file}: ${(err as Error).message}\n`)
      this.dropped += 1
    }
  }
}

/** Appends, creates 0640, and refuses a symlink where the log file should be. */
function openLogFile(file: string): number {
  return openSync(
    file,
    constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW,
    0o640,
  )
}

export const silentLog: Log = () => undefined
