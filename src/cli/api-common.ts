/**
 * What every `spiffe-edge api` verb shares: the common options (--socket-path, --output,
 * --timeout), connecting to the agent's Workload API socket, and spire-agent's Go-style time and
 * duration formatting.
 */
import { DEFAULT_AGENT_SOCKET } from '../agent/config.js'
import { SOCKET_ENV } from '../agent/workload-api/addr.js'
import { type WorkloadClient, workloadClient } from '../agent/workload-api/client.js'
import { UsageError } from '../errors.js'
import { durationOption, type Io, type OptionSpec, type OptionValues } from './command.js'

export const COMMON: Readonly<Record<string, OptionSpec>> = {
  'socket-path': {
    type: 'string',
    description: `the agent's Workload API socket (env ${SOCKET_ENV}, else ${DEFAULT_AGENT_SOCKET})`,
    valueName: 'PATH',
  },
  output: {
    type: 'string',
    description: 'pretty or json',
    default: 'pretty',
    valueName: 'FORMAT',
  },
  timeout: {
    type: 'string',
    description: 'how long to wait for the agent (5s, 500ms; plain numbers are seconds)',
    default: '5',
    valueName: 'DURATION',
  },
}

export function socketOf(values: OptionValues, io: Io): string {
  const v = values['socket-path']
  if (typeof v === 'string' && v !== '') return v
  const env = io.env[SOCKET_ENV]
  return env !== undefined && env !== '' ? env : DEFAULT_AGENT_SOCKET
}

export function outputOf(values: OptionValues): 'pretty' | 'json' {
  const v = values.output ?? 'pretty'
  if (v !== 'pretty' && v !== 'json') {
    throw new UsageError(`--output must be pretty or json, got '${String(v)}'`)
  }
  return v
}

export function timeoutOf(values: OptionValues): number {
  const n = durationOption(values, 'timeout', { positive: true, fraction: true }) ?? 5
  return Math.round(n * 1000)
}

export function connect(values: OptionValues, io: Io): WorkloadClient {
  return workloadClient(socketOf(values, io), { timeoutMs: timeoutOf(values) })
}

/** Go's time.Time %v form, as spire-agent prints it: 2006-01-02 15:04:05 +0000 UTC. */
export function goTime(d: Date): string {
  return `${d
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, '')} +0000 UTC`
}

/** Roughly Go's Duration.String for sub-minute durations. */
export function goDuration(ms: number): string {
  if (ms < 1) return `${Math.round(ms * 1000)}µs`
  if (ms < 1000) return `${Number(ms.toFixed(3))}ms`
  return `${Number((ms / 1000).toFixed(3))}s`
}

export const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64')

export function tdName(key: string): string {
  return key.replace(/^spiffe:\/\//, '')
}

export async function withClient<T>(
  values: OptionValues,
  io: Io,
  fn: (c: WorkloadClient) => Promise<T>,
): Promise<T> {
  const c = connect(values, io)
  try {
    return await fn(c)
  } finally {
    c.close()
  }
}
