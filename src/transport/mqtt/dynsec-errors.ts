/**
 * Errors of the dynsec admin client (stable codes, a remedy each, never a password in a
 * message) and the admin password file reader.
 */
import { readFileSync, statSync } from 'node:fs'
import { type ErrorCode, SpiffeEdgeError } from '../../errors.js'

const MAX_PASSWORD_FILE_BYTES = 1024

/** A dynsec admin failure: `brokerError` is the plugin's own text ("Client not found", ...). */
export class BrokerAdminError extends SpiffeEdgeError {
  readonly brokerError: string | undefined
  readonly command: string | undefined

  constructor(
    code: ErrorCode,
    message: string,
    details: { remedy?: string; cause?: unknown; brokerError?: string; command?: string } = {},
  ) {
    super(code, message, details)
    this.brokerError = details.brokerError
    this.command = details.command
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof BrokerAdminError && /not found/i.test(err.brokerError ?? '')
}

export function isAlreadyExists(err: unknown): boolean {
  return err instanceof BrokerAdminError && /already exists/i.test(err.brokerError ?? '')
}

/** Reads an admin password file: small, not empty, and readable by its owner only (fail closed). */
export function readPasswordFile(path: string): string {
  let st: ReturnType<typeof statSync>
  try {
    st = statSync(path)
  } catch (cause) {
    throw new SpiffeEdgeError('ERR_CONFIG', `cannot read the broker password file ${path}`, {
      cause,
      remedy: 'point the configuration at the password file the broker set-up wrote',
    })
  }
  if (!st.isFile() || st.size === 0 || st.size > MAX_PASSWORD_FILE_BYTES) {
    throw new SpiffeEdgeError(
      'ERR_CONFIG',
      `the broker password file ${path} must be a regular file of 1..${MAX_PASSWORD_FILE_BYTES} bytes`,
      { remedy: 'write the password alone on one line into the file' },
    )
  }
  if ((st.mode & 0o077) !== 0) {
    throw new SpiffeEdgeError(
      'ERR_CONFIG',
      `the broker password file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)})`,
      { remedy: `chmod 600 ${path}` },
    )
  }
  const pw = readFileSync(path, 'utf8').replace(/\r?\n$/, '')
  if (pw.length === 0 || /[\r\n]/.test(pw)) {
    throw new SpiffeEdgeError('ERR_CONFIG', `the broker password file ${path} is malformed`, {
      remedy: 'write the password alone on one line into the file',
    })
  }
  return pw
}

export function connectError(err: unknown, url: string, username: string): BrokerAdminError {
  const code = (err as { code?: unknown }).code
  // CONNACK 0x86 bad user name or password, 0x87 not authorized (v3: 4, 5).
  if (code === 134 || code === 135 || code === 4 || code === 5) {
    return new BrokerAdminError('ERR_BROKER_ADMIN_AUTH', `${url} refused the admin '${username}'`, {
      cause: err,
      remedy: 'check the dynsec admin user name and password file (mosquitto_ctrl dynsec init)',
    })
  }
  const why = err instanceof Error ? err.message : String(err)
  return new BrokerAdminError('ERR_BROKER_ADMIN_UNREACHABLE', `cannot reach ${url}: ${why}`, {
    cause: err,
    remedy: 'check that the broker runs, the URL and the broker CA',
  })
}
