/**
 * `[plugins.KeyManager.pkcs11]`: which module, which token (by label or serial: slot ids change
 * across reboots), where the PIN comes from and the label prefix. The PIN is never taken from
 * the config itself (configs get committed, copied and logged): a file only its owner can read,
 * or an environment variable.
 */
import { readFileSync, statSync } from 'node:fs'
import { ConfigReader, type Table } from '../../common/config.js'
import type { Pkcs11Options } from './manager.js'

const PATH = 'plugins.KeyManager.pkcs11'
const KEYS = [
  'module_path',
  'token_label',
  'token_serial',
  'pin_file',
  'pin_env',
  'key_label_prefix',
  'max_sessions',
] as const
const MAX_PIN = 256

/** Parses the table and reads the PIN; every problem in one ERR_CONFIG. */
export function parsePkcs11Config(
  data: Table,
  baseDir: string,
  env: NodeJS.ProcessEnv = process.env,
): Pkcs11Options {
  const r = new ConfigReader(baseDir)
  if (data.pin !== undefined || data.user_pin !== undefined) {
    r.problems.push(
      `${PATH}.pin: a PIN in the config is refused (configs are copied and logged); use pin_file (mode 0600) or pin_env`,
    )
  }
  r.known(
    Object.fromEntries(Object.entries(data).filter(([k]) => k !== 'pin' && k !== 'user_pin')),
    KEYS,
    PATH,
  )
  const modulePath = r.path(data, 'module_path', PATH) ?? ''
  const label = r.optionalString(data, 'token_label', PATH)
  const serial = r.optionalString(data, 'token_serial', PATH)
  if ((label === undefined) === (serial === undefined)) {
    r.problems.push(`${PATH}: set exactly one of token_label or token_serial`)
  }
  const pinFile = data.pin_file === undefined ? undefined : r.path(data, 'pin_file', PATH)
  const pinEnv = r.optionalString(data, 'pin_env', PATH)
  if ((pinFile === undefined) === (pinEnv === undefined)) {
    r.problems.push(`${PATH}: set exactly one of pin_file or pin_env`)
  }
  const keyLabelPrefix = r.string(data, 'key_label_prefix', PATH, 'spiffe-edge')!
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(keyLabelPrefix)) {
    r.problems.push(`${PATH}.key_label_prefix: 1-32 characters of A-Z, a-z, 0-9, . _ -`)
  }
  const maxSessions = r.int(data, 'max_sessions', PATH, 4, 1, 64)
  let pin = ''
  if (r.problems.length === 0) {
    pin = pinFile !== undefined ? readPinFile(pinFile, r) : readPinEnv(pinEnv!, env, r)
  }
  r.done(PATH)
  return {
    modulePath,
    token: label !== undefined ? { label } : { serial: serial! },
    pin,
    keyLabelPrefix,
    maxSessions,
  }
}

function checkPin(pin: string, where: string, r: ConfigReader): string {
  if (pin.length === 0 || pin.length > MAX_PIN || /[\0\r\n]/.test(pin)) {
    r.problems.push(`${where}: the PIN must be 1-${MAX_PIN} characters on one line`)
  }
  return pin
}

function readPinFile(file: string, r: ConfigReader): string {
  let text: string
  try {
    const st = statSync(file)
    if ((st.mode & 0o077) !== 0) {
      r.problems.push(
        `${PATH}.pin_file: ${file} has mode 0${(st.mode & 0o777).toString(8)}; make it 0600 (chmod 600) so only its owner can read the PIN`,
      )
      return ''
    }
    if (st.size > 4096) {
      r.problems.push(`${PATH}.pin_file: ${file} is larger than 4 KiB; it should hold the PIN only`)
      return ''
    }
    text = readFileSync(file, 'utf8')
  } catch (err) {
    r.problems.push(`${PATH}.pin_file: cannot read ${file}: ${(err as Error).message}`)
    return ''
  }
  // One trailing newline is what `echo PIN > file` leaves; anything else is part of the PIN.
  return checkPin(text.replace(/\r?\n$/, ''), `${PATH}.pin_file`, r)
}

function readPinEnv(name: string, env: NodeJS.ProcessEnv, r: ConfigReader): string {
  const v = env[name]
  if (v === undefined || v === '') {
    r.problems.push(`${PATH}.pin_env: the environment variable ${name} is not set`)
    return ''
  }
  return checkPin(v, `${PATH}.pin_env`, r)
}
