// Builds the TPM addon with node-gyp against the Node headers already on this machine when they
// exist (no header download: the only registries reachable are npm and Debian).
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const require = createRequire(import.meta.url)
const args = ['rebuild']
const prefix = dirname(dirname(process.execPath))
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include/node/node_api.h'))) {
  args.push(`--nodedir=${prefix}`)
}
const pc = spawnSync('pkg-config', ['--exists', 'tss2-esys', 'tss2-tctildr', 'tss2-mu', 'tss2-rc'])
if (pc.status !== 0) {
  console.error(
    'build:native: tpm2-tss development files not found by pkg-config (tss2-esys, tss2-tctildr, tss2-mu, tss2-rc).\n' +
      'Install them (Debian: apt-get install libtss2-dev pkg-config) or run scripts/install.sh.',
  )
  process.exit(1)
}
const gyp = require.resolve('node-gyp/bin/node-gyp.js')
const r = spawnSync(process.execPath, [gyp, ...args], { stdio: 'inherit' })
process.exit(r.status ?? 1)
