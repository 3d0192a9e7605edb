/**
 * The dynamic security plugin for the simulated broker: its state file (made once by
 * `mosquitto_ctrl dynsec init`, the tool that owns the format, with the admin password on stdin,
 * never on argv), then, once the broker runs, the roles and the two service clients made through
 * the same code the server uses (src/transport/mqtt/dynsec.ts). Passwords live in 0600 files.
 */
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { SimError } from '../src/errors.js'
import type { BrokerCredentials } from '../src/transport/mqtt/broker-access.js'
import { MosquittoDynSec } from '../src/transport/mqtt/dynsec.js'
import { readPasswordFile } from '../src/transport/mqtt/dynsec-client.js'
import { findBinary } from './process.js'

export const DYNSEC_ADMIN = 'spiffe-edge-admin'
export const DYNSEC_BOOTSTRAP = 'spiffe-edge-bootstrap'
export const DYNSEC_SERVER = 'spiffe-edge-server'
const PLUGIN = 'mosquitto_dynamic_security.so'

export interface DynSecFiles {
  /** The plugin's JSON state: clients (hashed passwords), roles, default ACL access. */
  readonly stateFile: string
  readonly pluginPath: string
  readonly adminUsername: string
  readonly adminPasswordFile: string
}

export interface DynSecInfo extends DynSecFiles {
  readonly bootstrap: BrokerCredentials
  readonly bootstrapPasswordFile: string
  readonly server: BrokerCredentials
  readonly serverPasswordFile: string
}

/** Debian puts the plugin in the multiarch lib dir; other builds use /usr/lib or /usr/local/lib. */
export function findDynSecPlugin(): string {
  const dirs = ['/usr/lib', '/usr/local/lib', '/usr/lib64']
  for (const dir of dirs) {
    if (existsSync(join(dir, PLUGIN))) return join(dir, PLUGIN)
    let subs: string[] = []
    try {
      subs = readdirSync(dir).filter((n) => n.endsWith('-linux-gnu'))
    } catch {
      continue
    }
    for (const s of subs) if (existsSync(join(dir, s, PLUGIN))) return join(dir, s, PLUGIN)
  }
  throw new SimError('ERR_SIM_BINARY_MISSING', `${PLUGIN} was not found under ${dirs.join(', ')}`, {
    remedy: 'install Mosquitto 2 with its plugins (Debian: apt-get install mosquitto)',
  })
}

function writeSecret(file: string, secret: string): void {
  // 'wx': a password file is never overwritten; a leftover one means a half-made state dir.
  writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: 'wx' })
}

/** Makes the state file and admin password on first use of a state dir; reuses them later. */
export function prepareDynSec(dir: string): DynSecFiles {
  const files: DynSecFiles = {
    stateFile: join(dir, 'dynsec.json'),
    pluginPath: findDynSecPlugin(),
    adminUsername: DYNSEC_ADMIN,
    adminPasswordFile: join(dir, 'dynsec-admin.password'),
  }
  const haveState = existsSync(files.stateFile)
  const havePw = existsSync(files.adminPasswordFile)
  if (haveState && havePw) return files
  if (haveState || havePw) {
    throw new SimError(
      'ERR_SIM_STATE_DIR',
      `${dir} holds only one of dynsec.json and dynsec-admin.password`,
      { remedy: 'use a fresh --state directory (or restore the missing file)' },
    )
  }
  const ctrl = findBinary('mosquitto_ctrl', 'mosquitto')
  const password = randomBytes(24).toString('base64url')
  writeSecret(files.adminPasswordFile, password)
  const r = spawnSync(ctrl, ['dynsec', 'init', files.stateFile, DYNSEC_ADMIN], {
    input: `${password}\n${password}\n`,
    encoding: 'utf8',
    timeout: 10_000,
  })
  if (r.status !== 0 || !existsSync(files.stateFile)) {
    throw new SimError(
      'ERR_SIM_COMMAND_FAILED',
      `mosquitto_ctrl dynsec init failed: ${(r.stderr || r.stdout || String(r.error)).trim()}`,
      { remedy: 'check that mosquitto_ctrl (Mosquitto 2) is installed' },
    )
  }
  // It holds password hashes: owner only (mosquitto_ctrl leaves it 0644).
  chmodSync(files.stateFile, 0o600)
  return files
}

/** mosquitto.conf lines that load the plugin and refuse anonymous clients. */
export function dynsecConfigLines(files: DynSecFiles): string[] {
  return [`plugin ${files.pluginPath}`, `plugin_opt_config_file ${files.stateFile}`]
}

/**
 * With the broker running: on first start, deny-by-default ACL access, the roles, and the
 * bootstrap and server clients (passwords into 0600 files); on later starts, the roles are
 * repaired and the existing passwords kept, so configured agents keep working.
 */
export async function provisionDynSec(
  dir: string,
  files: DynSecFiles,
  url: string,
  caFile: string | undefined,
): Promise<DynSecInfo> {
  const bootstrapPasswordFile = join(dir, 'dynsec-bootstrap.password')
  const serverPasswordFile = join(dir, 'dynsec-server.password')
  const dynsec = await MosquittoDynSec.connect({
    url,
    username: files.adminUsername,
    password: readPasswordFile(files.adminPasswordFile),
    ...(caFile === undefined ? {} : { ca: readFileSync(caFile) }),
    reconnectPeriodMs: 0,
  })
  try {
    let bootstrap: BrokerCredentials
    let server: BrokerCredentials
    const have = [bootstrapPasswordFile, serverPasswordFile].filter((f) => existsSync(f))
    if (have.length === 1) {
      throw new SimError(
        'ERR_SIM_STATE_DIR',
        `${dir} holds only ${have[0]} of the two client passwords`,
        {
          remedy: 'use a fresh --state directory (or restore the missing file)',
        },
      )
    }
    if (have.length === 2) {
      await dynsec.ensureRoles()
      bootstrap = { username: DYNSEC_BOOTSTRAP, password: readPasswordFile(bootstrapPasswordFile) }
      server = { username: DYNSEC_SERVER, password: readPasswordFile(serverPasswordFile) }
    } else {
      // Unsubscribing is harmless; everything else a role has to grant.
      await dynsec.admin.setDefaultACLAccess({
        publishClientSend: false,
        publishClientReceive: false,
        subscribe: false,
        unsubscribe: true,
      })
      await dynsec.ensureRoles()
      bootstrap = await dynsec.ensureServiceClient('bootstrap', DYNSEC_BOOTSTRAP)
      server = await dynsec.ensureServiceClient('server', DYNSEC_SERVER)
      writeSecret(bootstrapPasswordFile, bootstrap.password)
      writeSecret(serverPasswordFile, server.password)
    }
    return { ...files, bootstrap, bootstrapPasswordFile, server, serverPasswordFile }
  } finally {
    await dynsec.close()
  }
}
