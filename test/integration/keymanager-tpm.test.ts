/**
 * The TPM key manager runs the shared key manager conformance suite against a real swtpm: keys are
 * fixedTPM signing keys under the SRK, found again from their blobs by a new manager over the same
 * directory. The TPM templates make ec-p256 and rsa-2048; the other types must be refused.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before } from 'node:test'
import { type SwtpmInstance, startSwtpm } from '../../hardware-sim/swtpm.js'
import { TpmKeyManager } from '../../src/keymanager/tpm.js'
import type { KeyManager } from '../../src/keymanager/types.js'
import { TpmContext } from '../../src/tpm/context.js'
import { runKeyManagerConformance } from '../helpers/keymanager-conformance.js'

const root = mkdtempSync(join(tmpdir(), 'spiffe-edge-km-tpm-'))
let sim: SwtpmInstance
let tpm: TpmContext
let n = 0
const dirs = new WeakMap<KeyManager, string>()

before(async () => {
  sim = await startSwtpm()
  tpm = await TpmContext.open(sim.tcti)
})
after(async () => {
  await tpm?.close()
  await sim?.stop()
  rmSync(root, { recursive: true, force: true })
})

const managerOn = (dir: string): KeyManager => {
  const km = new TpmKeyManager(tpm, dir)
  dirs.set(km, dir)
  return km
}

runKeyManagerConformance('tpm', {
  make: async () => managerOn(join(root, `keys-${++n}`)),
  // One swtpm serves one connection: a "restart" is a new manager over the same blob directory.
  reopen: async (km) => managerOn(dirs.get(km)!),
  keyTypes: ['ec-p256', 'rsa-2048'],
})
