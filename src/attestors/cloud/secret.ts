/**
 * A cloud API secret (an Azure app registration's client secret) from a file or an environment
 * variable rather than the config, as the PKCS#11 PIN is: configs get committed, copied and
 * logged. The file must be a regular file owned by this process's user (or root) that nobody
 * else can read, of one line; one trailing newline (what `echo secret > file` leaves) is dropped.
 */
import { readChecked } from '../../common/read-checked.js'

const MAX_SECRET_FILE = 4096

/** The secret, or a problem (the text goes into the config error; never the secret itself). */
export function readSecretFile(
  key: string,
  file: string,
  euid: number | undefined = process.geteuid?.(),
): { secret: string } | { problem: string } {
  // One open (O_NOFOLLOW: a symbolic link's target could be anyone's file), checks on that
  // descriptor, the read through it: nothing swapped in after the check is read.
  const r = readChecked(file, {
    noFollow: true,
    maxBytes: MAX_SECRET_FILE,
    check: (st) => {
      if (euid !== undefined && st.uid !== euid && st.uid !== 0)
        return `is owned by uid ${st.uid}, not by this process's uid ${euid} or root`
      if ((st.mode & 0o077) !== 0)
        return `has mode 0${(st.mode & 0o777).toString(8)}; make it 0600 (chmod 600) so only its owner can read the secret`
      return undefined
    },
  })
  if ('errno' in r) return { problem: `${key}: cannot read ${file}: ${r.errno}` }
  if ('refused' in r) return { problem: `${key}: ${file} ${r.refused}` }
  if ('oversize' in r || r.text === '')
    return { problem: `${key}: ${file} must hold the secret alone (1 to ${MAX_SECRET_FILE} bytes)` }
  return oneLine(key, r.text.replace(/\r?\n$/, ''))
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
