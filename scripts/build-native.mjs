// Builds the addons with node-gyp against the Node headers already on this machine when they
// exist (no header download: the only registries reachable are npm and Debian).
// Two targets: peercred (libc only, always built: the server and the Workload API check callers
// with it) and tpm_native (needs tpm2-tss; skipped with a warning when its headers are missing,
// so a join-token agent or a server still builds what it needs).
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
const env = { ...process.env }
const pc = spawnSync('pkg-config', ['--exists', 'tss2-esys', 'tss2-tctildr', 'tss2-mu', 'tss2-rc'])
if (env.SPIFFE_EDGE_WITH_TPM === '0' || pc.status !== 0) {
  if (env.SPIFFE_EDGE_WITH_TPM !== '0') {
    console.error(
      'build:native: tpm2-tss development files not found by pkg-config (tss2-esys, tss2-tctildr, tss2-mu, tss2-rc);\n' +
        'building only the peercred addon. For TPM support install them (Debian: apt-get install libtss2-dev pkg-config) or run scripts/install.sh.',
    )
  }
  env.SPIFFE_EDGE_WITH_TPM = '0'
}
const gyp = require.resolve('node-gyp/bin/node-gyp.js')
const r = spawnSync(process.execPath, [gyp, ...args], { stdio: 'inherit', env })
process.exit(r.status ?? 1)
