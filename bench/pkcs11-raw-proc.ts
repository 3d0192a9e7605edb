/**
 * The raw PKCS#11 floor (bench helper), in its own process: pkcs11js straight against one token
 * key, one logged-in session. Forked with an IPC channel (env BENCH_P11_MODULE, BENCH_P11_TOKEN,
 * BENCH_P11_PIN, SOFTHSM2_CONF); messages:
 *   {op:'find', label} → {}: look up the private key with that CKA_LABEL;
 *   {op:'sign', n} → {cpuUs, wallMs}: n × (C_SignInit + C_Sign of a SHA-256 digest of a
 *     certificate-sized message), this process's CPU time (user + system, µs) and wall time for it;
 *   {op:'quit'}. On start it sends {}.
 * Synchronous C_Sign on the main thread: the cheapest way to drive the token, no thread hops.
 * The digest is computed once per signature, as the key manager does.
 */
import { createHash } from 'node:crypto'
import pkcs11js from 'pkcs11js'

const send = (m: unknown) => process.send!(m)
const p = new pkcs11js.PKCS11()
p.load(process.env.BENCH_P11_MODULE!)
p.C_Initialize()
const slot = p
  .C_GetSlotList(true)
  .find((x) => p.C_GetTokenInfo(x).label.trim() === process.env.BENCH_P11_TOKEN)
if (!slot) throw new Error(`no token labelled ${process.env.BENCH_P11_TOKEN}`)
const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION)
p.C_Login(session, pkcs11js.CKU_USER, process.env.BENCH_P11_PIN!)
let key: pkcs11js.Handle | undefined
const tbs = new Uint8Array(450).fill(7)
const out = Buffer.alloc(64)

process.on('message', (m: { op: string; label?: string; n?: number }) => {
  try {
    if (m.op === 'find') {
      p.C_FindObjectsInit(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_LABEL, value: m.label! },
      ])
      ;[key] = p.C_FindObjects(session, 1)
      p.C_FindObjectsFinal(session)
      send(key ? {} : { error: `no private key labelled ${m.label} in the token` })
    } else if (m.op === 'sign') {
      if (!key) throw new Error('find the key first')
      const u0 = process.cpuUsage()
      const t0 = performance.now()
      for (let i = 0; i < m.n!; i++) {
        p.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key)
        const sig = p.C_Sign(session, createHash('sha256').update(tbs).digest(), out)
        if (sig.length !== 64) throw new Error(`a ${sig.length}-byte signature`)
      }
      const wallMs = performance.now() - t0
      const u = process.cpuUsage(u0)
      send({ cpuUs: u.user + u.system, wallMs })
    } else if (m.op === 'quit') {
      p.C_CloseSession(session)
      p.C_Finalize()
      process.exit(0)
    }
  } catch (err) {
    send({ error: (err as Error).message })
  }
})
send({})
