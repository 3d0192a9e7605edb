/**
 * Start-up checks on the server's data dir: its mode, `--reset`, and keys without their datastore.
 * The data dir lock itself is src/common/datadir-lock.ts (the agent takes it too).
 */
import { chmodSync, existsSync, renameSync, statSync } from 'node:fs'
import type { Log } from '../common/log.js'
import { SpiffeEdgeError } from '../errors.js'
import { keyFileNames } from '../keymanager/disk.js'
import type { KeyManager } from '../keymanager/types.js'
import type { Datastore } from './datastore/types.js'

/**
 * A data dir others can write to lets them replace the datastore or key files: take the group and
 * other write bits away (and say so) rather than run on it.
 */
export function tightenDataDir(dir: string, log: Log): void {
  const mode = statSync(dir).mode & 0o777
  if ((mode & 0o022) === 0) return
  try {
    chmodSync(dir, mode & ~0o022)
  } catch (err) {
    throw new SpiffeEdgeError(
      'ERR_DATA_DIR',
      `data dir ${dir} is writable by others (0${mode.toString(8)}) and cannot be fixed`,
      { cause: err, remedy: 'chmod go-w the data dir, or run the server as its owner' },
    )
  }
  log('warn', 'data dir was writable by group or others; fixed', {
    path: dir,
    from: `0${mode.toString(8)}`,
    to: `0${(mode & ~0o022).toString(8)}`,
  })
}

/** `--reset`: the datastore (with its -wal/-shm) and the key directory renamed, never deleted. */
export function moveAside(datastorePath: string, keyDir: string | undefined, log: Log): void {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const moved: string[] = []
  const move = (from: string, to: string) => {
    if (!existsSync(from)) return
    if (existsSync(to)) {
      throw new SpiffeEdgeError('ERR_DATA_DIR', `cannot move ${from} aside: ${to} exists`, {
        remedy: 'retry in a second, or move the old files away by hand',
      })
    }
    renameSync(from, to)
    moved.push(to)
  }
  for (const suffix of ['', '-wal', '-shm', '-journal'])
    move(datastorePath + suffix, `${datastorePath}.reset-${stamp}${suffix}`)
  if (keyDir !== undefined) move(keyDir, `${keyDir}.reset-${stamp}`)
  log('warn', 'reset: the old datastore and keys were moved aside; a new CA will be created', {
    moved,
  })
}

/**
 * Keys on disk but no CA journal in the datastore means the datastore was lost, emptied or
 * replaced. Starting fresh would mint new CA keys (a new trust root every agent rejects) next to
 * the old ones, so refuse and say how to recover.
 */
export async function refuseKeysWithoutDatastore(
  datastore: Datastore,
  keyDir: string,
  datastorePath: string,
): Promise<void> {
  if ((await datastore.getJournal('ca')) !== undefined) return
  const keys = await keyFileNames(keyDir)
  if (keys.length === 0) return
  throw unknownKeys(
    keyDir,
    keys,
    datastorePath,
    'run `server run --reset`, which moves the datastore and keys aside (agents must then trust the new bundle)',
  )
}

/** CA keys in `where` that the datastore does not know; `newCa` says how to start over. */
function unknownKeys(
  where: string,
  keys: readonly string[],
  datastorePath: string,
  newCa: string,
): SpiffeEdgeError {
  return new SpiffeEdgeError(
    'ERR_DATASTORE_MISSING',
    `${where} holds CA keys (${keys.slice(0, 3).join(', ')}${keys.length > 3 ? ', ...' : ''}) but the datastore ${datastorePath} does not know them (it is missing, empty or another one)`,
    {
      remedy: `restore datastore.sqlite3 from a backup; or, to start a new CA on purpose, ${newCa}`,
    },
  )
}

/**
 * The same check for keys that live in a token: the datastore has no CA journal but the token
 * holds keys under our label prefix. `--reset` cannot move keys in an HSM aside, so the way out
 * is another prefix (or deleting them with the vendor's tool).
 */
export async function refuseTokenKeysWithoutDatastore(
  datastore: Datastore,
  keyManager: KeyManager,
  where: string,
  datastorePath: string,
): Promise<void> {
  if ((await datastore.getJournal('ca')) !== undefined) return
  const ids = (await keyManager.listKeys()).map((k) => k.id)
  if (ids.length === 0) return
  throw unknownKeys(
    where,
    ids,
    datastorePath,
    'set another key_label_prefix (keys in a token are never deleted by --reset)',
  )
}
