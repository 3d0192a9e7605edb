/**
 * A cloud API secret (an Azure app registration's client secret) from a file or an environment
 * variable rather than the config, as the PKCS#11 PIN is: configs get committed, copied and
 * logged. The file must be a regular file owned by this process's user (or root) that nobody
 * else can read, of one line; one trailing newline (what `echo secret > file` leaves) is dropped.
 */
import { lstatSync, readFileSync } from 'node:fs'

const MAX_SECRET_FILE = 4096

/** The secret, or a problem (the text goes into the config error; never the secret itself). */
export function readSecretFile(
  key: string,
  file: string,
  euid: number | undefined = process.geteuid?.(),
): { secret: string } | { problem: string } {
  let text: string
  try {
    // lstat: a symbolic link's target could be anyone's file.
    const st = lstatSync(file)
    if (!st.isFile()) return { problem: `${key}: ${file} is not a regular file` }
    if (euid !== undefined && st.uid !== euid && st.uid !== 0)
      return {
        problem: `${key}: ${file} is owned by uid ${st.uid}, not by this process's uid ${euid} or root`,
      }
    if ((st.mode & 0o077) !== 0)
      return {
        problem: `${key}: ${file} has mode 0${(st.mode & 0o777).toString(8)}; make it 0600 (chmod 600) so only its owner can read the secret`,
      }
    if (st.size === 0 || st.size > MAX_SECRET_FILE)
      return {
        problem: `${key}: ${file} must hold the secret alone (1 to ${MAX_SECRET_FILE} bytes)`,
      }
    text = readFileSync(file, 'utf8')
  } catch (err) {
    return {
      problem: `${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
    }
  }
  return oneLine(key, text.replace(/\r?\n$/, ''))
}

export function readSecretEnv(
  key: string,
  name: string,
  env: NodeJS.ProcessEnv,
): { secret: string } | { problem: string } {
  const v = env[name]
  if (v === undefined || v === '')
    return { problem: `${key}: the environment variable ${name} is not set` }
  return oneLine(key, v)
}

function oneLine(key: string, secret: string): { secret: string } | { problem: string } {
  if (secret === '' || /[\0\r\n]/.test(secret) || secret.length > MAX_SECRET_FILE)
    return { problem: `${key}: the secret must be one non-empty line` }
  return { secret }
}
