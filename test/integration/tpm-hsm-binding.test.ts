/**
 * The server's checks on a TPM attestation whose agent key is in a PKCS#11 token (real swtpm, a
 * real SoftHSM2 key): the quote's qualifying data must commit to this exchange's nonce and to the
 * CSR key's SPKI. A CSR from another key, a quote bound to another key, a replayed quote, a
 * server without allow_hsm_agent_key and a stray certify are all refused.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { tpmAgentAttestor } from '../../src/attestors/tpm/agent.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../../src/attestors/tpm/server.js'
import type { Challenger } from '../../src/attestors/types.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { Pkcs11KeyManager } from '../../src/keymanager/pkcs11/manager.js'
import type { Signer } from '../../src/keymanager/types.js'
import { TpmContext } from '../../src/tpm/context.js'
import {
  attestContext,
  decodeWire as decode,
  encodeWire as encode,
  memoryState,
  rejectsWith,
  replayQuote,
  type Wire,
} from '../helpers/tpm-attest.js'

const b64spki = (k: Signer) =>
  k.publicKey.export({ type: 'spki', format: 'der' }).toString('base64')

test('TPM attestation with a PKCS#11 agent key: bound by the quote; mismatches, replays and no opt-in refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-hsm-'))
  await using sim = await startSwtpm()
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'bind' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const km = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'bind' },
    pin: token.pin,
    keyLabelPrefix: 'agent',
  })
  const tpm = await TpmContext.open(sim.tcti)
  t.after(async () => {
    km.close()
    await tpm.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const key = await km.generateKey('agent-svid-1', 'ec-p256')
  const other = await new MemoryKeyManager().generateKey('other', 'ec-p256')
  const agent = tpmAgentAttestor({ tpm, dataDir: join(dir, 'tpm'), hsmAgentKey: () => key })
  const state = memoryState()
  const server = (allow: boolean) =>
    tpmServerAttestor(
      parseTpmServerConfig(
        { ek_ca_bundle: sim.ekCaBundle, ...(allow ? { allow_hsm_agent_key: true } : {}) },
        '/',
      ),
    )
  const attest = async (
    o: {
      allow?: boolean
      csrKey?: Signer
      payload?: (p: Wire) => Wire
      respond?: (c: Uint8Array) => Promise<Uint8Array>
    } = {},
  ) => {
    const p = decode(await agent.payload())
    return server(o.allow ?? true).attest(
      encode(o.payload ? o.payload(p) : p),
      (o.respond ?? agent.respond) as Challenger,
      attestContext(o.csrKey ?? key, state),
    )
  }

  // The honest agent: admitted, selector says where its key is, no certify on the wire.
  let recorded: Uint8Array | undefined
  const ok = await attest({
    respond: async (c) => {
      recorded = await agent.respond(c)
      return recorded
    },
  })
  assert.ok(ok.selectors.some((s) => s.type === 'tpm' && s.value === 'agent_key:pkcs11'))
  assert.ok(!ok.selectors.some((s) => s.value === 'agent_key:tpm'))
  assert.equal(decode(recorded!).certify_message, undefined)
  assert.equal(decode(await agent.payload()).agent_key_spki, b64spki(key))

  // No opt-in on the server.
  await assert.rejects(attest({ allow: false }), rejectsWith('hsm_key'))
  // A CSR from another key than the one the payload names.
  await assert.rejects(attest({ csrKey: other }), rejectsWith('hsm_key'))
  // Someone holding another key reuses this TPM's answers: the payload and CSR name their key,
  // the quote commits to the token key.
  await assert.rejects(
    attest({ csrKey: other, payload: (p) => ({ ...p, agent_key_spki: b64spki(other) }) }),
    rejectsWith('quote', 'nonce'),
  )
  // A replayed quote with a fresh activation.
  await assert.rejects(
    attest({ respond: replayQuote(agent.respond, recorded!) }),
    rejectsWith('quote', 'nonce'),
  )
  // A certify where none belongs, and a payload naming both key kinds.
  await assert.rejects(
    attest({
      respond: async (c) =>
        encode({
          ...decode(await agent.respond(c)),
          certify_message: 'AAAA',
          certify_signature: 'AAAA',
        }),
    }),
    rejectsWith('response'),
  )
  await assert.rejects(
    attest({ payload: (p) => ({ ...p, agent_key_public: 'AAAA' }) }),
    rejectsWith('payload'),
  )
  // The honest agent still gets in afterwards (nothing above poisoned its state).
  await attest()
})
