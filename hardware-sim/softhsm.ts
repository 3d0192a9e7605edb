/**
 * A SoftHSM2 token in a private state directory: the PKCS#11 stand-in for a device HSM.
 * Everything (config, token store, token.json) lives under the state dir, so nothing touches the
 * system-wide SoftHSM config and a second init on the same dir returns the same token.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { SimError } from '../src/errors.js'
import { ensureStateDir, findBinary } from './process.js'

const MODULE_PATHS = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
]

export interface SoftHsmOptions {
  readonly stateDir?: string
  readonly label?: string
  readonly pin?: string
  readonly soPin?: string
}

export interface SoftHsmToken {
  readonly modulePath: string
  readonly slot: number
  readonly tokenLabel: string
  readonly pin: string
  readonly soPin: string
  readonly confPath: string
  readonly stateDir: string
  /** Set these before C_Initialize: SoftHSM reads its config path from the environment. */
  readonly env: { readonly SOFTHSM2_CONF: string }
  [Symbol.asyncDispose](): Promise<void>
}

type TokenRecord = Omit<SoftHsmToken, 'env' | typeof Symbol.asyncDispose>

export function findSoftHsmModule(): string {
  const found = MODULE_PATHS.find((p) => existsSync(p))
  if (found === undefined) {
    throw new SimError(
      'ERR_SIM_BINARY_MISSING',
      `libsofthsm2.so not found in ${MODULE_PATHS.join(', ')}`,
      {
        remedy: 'install it (Debian: apt-get install softhsm2) or run scripts/install.sh',
      },
    )
  }
  return found
}

function run(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolveRun, reject) => {
    execFile(cmd, args, { env, timeout: 30000 }, (err, stdout, stderr) => {
      if (err) {
        // The argv holds the PINs: report the exit status and stderr, never the command line.
        const status = (err as { code?: unknown }).code ?? 'unknown'
        reject(
          new SimError(
            'ERR_SIM_COMMAND_FAILED',
            `softhsm2-util --init-token failed (exit ${String(status)}): ${String(stderr).trim()}`,
            {
              remedy:
                'check the state directory and the SoftHSM config it holds, or use a fresh --state',
            },
          ),
        )
        return
      }
      resolveRun(String(stdout))
    })
  })
}

function readRecord(file: string): TokenRecord {
  try {
    const r = JSON.parse(readFileSync(file, 'utf8')) as Partial<TokenRecord>
    if (
      typeof r.modulePath !== 'string' ||
      typeof r.slot !== 'number' ||
      typeof r.tokenLabel !== 'string' ||
      typeof r.pin !== 'string' ||
      typeof r.soPin !== 'string' ||
      typeof r.confPath !== 'string' ||
      typeof r.stateDir !== 'string'
    ) {
      throw new Error('missing fields')
    }
    return r as TokenRecord
  } catch (err) {
    throw new SimError(
      'ERR_SIM_STATE_DIR',
      `${file} is not a valid token record: ${(err as Error).message}`,
      {
        cause: err,
        remedy: 'remove the state directory and run init again',
      },
    )
  }
}

function toToken(r: TokenRecord, removeDir: string | undefined): SoftHsmToken {
  return {
    ...r,
    env: { SOFTHSM2_CONF: r.confPath },
    async [Symbol.asyncDispose]() {
      if (removeDir !== undefined) await rm(removeDir, { recursive: true, force: true })
    },
  }
}

/** Initialises a SoftHSM2 token in stateDir (or a temp dir), or returns the one already there. */
export async function initSoftHsm(opts: SoftHsmOptions = {}): Promise<SoftHsmToken> {
  const modulePath = findSoftHsmModule()
  const util = findBinary('softhsm2-util', 'softhsm2')
  let dir: string
  let created: string | undefined
  if (opts.stateDir === undefined) {
    dir = await mkdtemp(join(tmpdir(), 'spiffe-edge-hsm-'))
    created = dir
  } else {
    dir = resolve(opts.stateDir)
    ensureStateDir(dir)
  }
  try {
    const recordPath = join(dir, 'token.json')
    if (existsSync(recordPath)) {
      const existing = readRecord(recordPath)
      const asked = { tokenLabel: opts.label, pin: opts.pin, soPin: opts.soPin }
      for (const [k, v] of Object.entries(asked)) {
        // Silently handing back a token with another label or PIN would only fail later, at login.
        if (v !== undefined && existing[k as keyof typeof asked] !== v) {
          throw new SimError(
            'ERR_SIM_STATE_DIR',
            `${dir} already holds a token with a different ${k}`,
            {
              remedy: 'use another --state directory, or remove this one to start over',
            },
          )
        }
      }
      return toToken(existing, created)
    }

    const tokenDir = join(dir, 'tokens')
    mkdirSync(tokenDir, { recursive: true, mode: 0o700 })
    chmodSync(tokenDir, 0o700)
    const confPath = join(dir, 'softhsm2.conf')
    const conf = [
      `directories.tokendir = ${tokenDir}`,
      'objectstore.backend = file',
      'log.level = ERROR',
      'slots.removable = false',
      '',
    ].join('\n')
    writeFileSync(confPath, conf, { mode: 0o600 })
    chmodSync(confPath, 0o600)

    const tokenLabel = opts.label ?? 'spiffe-edge'
    const pin = opts.pin ?? randomBytes(8).toString('hex')
    const soPin = opts.soPin ?? randomBytes(8).toString('hex')
    const env = { ...process.env, SOFTHSM2_CONF: confPath }
    const args = ['--init-token', '--free', '--label', tokenLabel, '--pin', pin, '--so-pin', soPin]
    const out = await run(util, args, env)
    const m = /reassigned to slot (\d+)/.exec(out)
    if (!m?.[1]) {
      throw new SimError(
        'ERR_SIM_COMMAND_FAILED',
        `could not read the slot number from softhsm2-util: ${out.trim()}`,
        {
          remedy: 'check the installed softhsm2 version (2.5 or later is expected)',
        },
      )
    }
    const record: TokenRecord = {
      modulePath,
      slot: Number(m[1]),
      tokenLabel,
      pin,
      soPin,
      confPath,
      stateDir: dir,
    }
    writeFileSync(recordPath, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 })
    chmodSync(recordPath, 0o600)
    return toToken(record, created)
  } catch (err) {
    if (created !== undefined) await rm(created, { recursive: true, force: true })
    throw err
  }
}
