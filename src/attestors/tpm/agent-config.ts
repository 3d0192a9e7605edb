/**
 * The agent-side settings of the TPM node attestor ([plugins.NodeAttestor.tpm]) and the reading of
 * the firmware event log it sends when the server asks (agent.ts uses both).
 */
import { open } from 'node:fs/promises'
import { gzipSync } from 'node:zlib'
import { ConfigError, type Table } from '../../common/config.js'
import { DEFAULT_LIMITS } from '../../tpm/eventlog/parse.js'
import type { EkAlgorithm } from '../../tpm/keys.js'
import type { KeyAlgorithm } from '../../tpm/templates.js'
import { MAX_EVENT_LOG_COMPRESSED, TpmAttestationError } from './protocol.js'

export const DEFAULT_TCTI = 'device:/dev/tpmrm0'
/** Where Linux exposes the firmware's TCG event log (securityfs). */
export const DEFAULT_EVENT_LOG_PATH = '/sys/kernel/security/tpm0/binary_bios_measurements'
/** The [agent] TPM settings: tcti, ek_algorithm, ak_algorithm, persist_ek. */
export interface TpmAgentConfig {
  readonly tcti: string
  readonly ekAlgorithm: EkAlgorithm | undefined
  readonly akAlgorithm: KeyAlgorithm
  readonly persistEk: boolean
  readonly eventLogPath: string
}

const EK_ALGS: readonly EkAlgorithm[] = ['rsa-2048', 'ecc-p256', 'ecc-p384']
const AK_ALGS: readonly KeyAlgorithm[] = ['ecc-p256', 'rsa-2048']

/** Validates an agent-side [plugins.NodeAttestor.tpm] table. */
export function parseTpmAgentConfig(raw: Table): TpmAgentConfig {
  const problems: string[] = []
  const known = ['tcti', 'ek_algorithm', 'ak_algorithm', 'persist_ek', 'event_log_path']
  for (const k of Object.keys(raw)) if (!known.includes(k)) problems.push(`${k}: unknown key`)
  const str = (k: string, def: string | undefined, allowed?: readonly string[]) => {
    const v = raw[k]
    if (v === undefined) return def
    if (typeof v !== 'string' || v === '' || (allowed && !allowed.includes(v))) {
      problems.push(`${k}: must be ${allowed ? `one of ${allowed.join(', ')}` : 'a string'}`)
      return def
    }
    return v
  }
  const tcti = str('tcti', DEFAULT_TCTI)!
  const ekAlgorithm = str('ek_algorithm', undefined, EK_ALGS) as EkAlgorithm | undefined
  const akAlgorithm = str('ak_algorithm', 'ecc-p256', AK_ALGS) as KeyAlgorithm
  let persistEk = false
  if (raw.persist_ek !== undefined) {
    if (typeof raw.persist_ek !== 'boolean') problems.push('persist_ek: must be true or false')
    else persistEk = raw.persist_ek
  }
  const eventLogPath = str('event_log_path', DEFAULT_EVENT_LOG_PATH)!
  if (problems.length > 0) throw new ConfigError('plugins.NodeAttestor.tpm', problems)
  return { tcti, ekAlgorithm, akAlgorithm, persistEk, eventLogPath }
}

/**
 * Reads the event log, at most the server's cap (securityfs reports size 0, so read until EOF),
 * and gzips it for the wire. Too big or unreadable is the agent's error, said here where it is
 * fixable, not as a refusal from the server.
 */
export async function readEventLog(path: string): Promise<Uint8Array> {
  const max = DEFAULT_LIMITS.maxBytes
  let fh: Awaited<ReturnType<typeof open>>
  try {
    fh = await open(path, 'r')
  } catch (err) {
    throw new TpmAttestationError(
      'event_log',
      `cannot read the event log ${path}: ${(err as Error).message}`,
      undefined,
      err,
    )
  }
  const chunks: Buffer[] = []
  let total = 0
  try {
    for (;;) {
      const buf = Buffer.alloc(64 * 1024)
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      total += bytesRead
      if (total > max) {
        throw new TpmAttestationError('event_log', `the event log ${path} is over ${max} bytes`)
      }
      chunks.push(buf.subarray(0, bytesRead))
    }
  } finally {
    await fh.close()
  }
  const gz = new Uint8Array(gzipSync(Buffer.concat(chunks), { level: 9 }))
  if (gz.length > MAX_EVENT_LOG_COMPRESSED) {
    throw new TpmAttestationError(
      'event_log',
      `the event log ${path} compresses to ${gz.length} bytes, over the protocol's ${MAX_EVENT_LOG_COMPRESSED}`,
    )
  }
  return gz
}
