/**
 * The agent half of the TPM node attestor: sends the EK (certificate, NV chain, public area), the
 * AK and the agent's own key (agent-key.ts); answers the one challenge with ActivateCredential, a
 * quote over the PCRs the server names and a certify of a TPM agent key by the AK. The AK is made
 * once and its blob kept in dataDir, so restarts and re-attestations reuse it.
 *
 * TPM work per attempt: the payload loads the AK (proving the stored AK is this TPM's) and the
 * agent key under the SRK key generation handed over, flushes the SRK, and keeps the AK and the
 * key loaded, owned by the attempt, until its challenge is answered; the key manager signs the CSR
 * with the held key meanwhile (TpmContext.loadShared / borrowLoaded). That is two of swtpm's three
 * object slots between the round trips, and nothing is recreated or reloaded for the challenge.
 * They are offered to be flushed if another load finds no free slot (TpmContext.yieldWhenFull):
 * the answer then loads them again. While the payload travels (payloadSent) it also opens the
 * persistent EK's reference and the EK's policy session (held-attempt.ts). An attempt that gets no
 * challenge frees all of it when the transport ends it (end()), at the next payload, or after
 * HOLD_MS; an answered one flushes it after handing its answer over.
 */
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { withTpm } from '../../keymanager/tpm.js'
import {
  isConnectionFailure,
  type KeyBlob,
  type KeyHandle,
  type TpmContext,
} from '../../tpm/context.js'
import { EK_SLOTS, type EkSlot, extractDerCertificate } from '../../tpm/ek.js'
import { TpmError } from '../../tpm/errors.js'
import { createAk, type EkAlgorithm, openEk, openSrk } from '../../tpm/keys.js'
import { type PcrSelection, parsePcrSpec } from '../../tpm/structures/pcr.js'
import { keyAlgorithmLabel, parseTpm2bPublic } from '../../tpm/structures/public.js'
import type { KeyAlgorithm } from '../../tpm/templates.js'
import type { AgentNodeAttestor } from '../types.js'
import { AdoptedSrk } from './adopted-srk.js'
import { DEFAULT_EVENT_LOG_PATH, readEventLog } from './agent-config.js'
import { type EkSeen, seeEk, splitDerCertificates, tpm2b } from './agent-ek.js'
import { type AgentKeyOptions, agentKeySource } from './agent-key.js'
import {
  disposePrepared,
  type Held,
  type Prepared,
  prepareAnswer,
  releaseHeld,
  stillUsable,
} from './held-attempt.js'
import { quoteCovers, toWire } from './pcr-wire.js'
import {
  encodePayload,
  encodeResponse,
  MAX_CHAIN,
  parseChallenge,
  TPM,
  TpmAttestationError,
} from './protocol.js'

export {
  DEFAULT_EVENT_LOG_PATH,
  DEFAULT_TCTI,
  parseTpmAgentConfig,
  readEventLog,
  type TpmAgentConfig,
} from './agent-config.js'
export type { AgentTpmKey } from './agent-key.js'

// NV indices an EK certificate chain may occupy (TCG EK profile 2.x).
const CHAIN_FIRST = 0x01c00100
const CHAIN_LAST = 0x01c001ff

export interface TpmAgentAttestorOptions extends AgentKeyOptions {
  /** An open TPM, owned by the caller (also shared with the TPM key manager). */
  readonly tpm: TpmContext
  /** Where the AK blob is kept (ak.priv 0600, ak.pub 0644). */
  readonly dataDir: string
  /** Default: the first EK with a certificate in NV, rsa-2048 first; else rsa-2048. */
  readonly ekAlgorithm?: EkAlgorithm | undefined
  /** Default ecc-p256. An AK of another algorithm found in dataDir is replaced. */
  readonly akAlgorithm?: KeyAlgorithm | undefined
  /** Persist a recreated EK at its standard handle (RSA CreatePrimary takes seconds on chips). */
  readonly persistEk?: boolean | undefined
  /** The TCG event log sent when the server asks (default DEFAULT_EVENT_LOG_PATH). */
  readonly eventLogPath?: string | undefined
}

/** How long an attempt's AK and agent key stay loaded waiting for its challenge (above any deadline). */
const HOLD_MS = 60_000

function sameBlob(a: KeyBlob | undefined, b: KeyBlob | undefined): boolean {
  return !!a && !!b && Buffer.from(a.private).equals(Buffer.from(b.private))
}

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err
    ? String((err as { code: unknown }).code)
    : undefined
}

/**
 * A load failure that means the blob belongs to no key of this TPM (integrity, binding, size: TPM
 * errors), as opposed to the TPM being unreachable or out of slots, which says nothing about it.
 */
function blobRejected(err: unknown): boolean {
  if (!(err instanceof TpmError) || isConnectionFailure(err)) return false
  const warning = err.layer === 0 && (err.rc & 0x900) === 0x900
  return !warning
}

export interface TpmAgentNodeAttestor extends AgentNodeAttestor {
  /**
   * Takes over an SRK reference (TpmKeyManager.handOffSrk) for the next payload, so the attempt
   * after key generation needs no CreatePrimary of its own. Released if no payload comes soon.
   */
  adoptSrk(srk: KeyHandle): void
}

/** The TPM node attestor, agent half. */
export function tpmAgentAttestor(o: TpmAgentAttestorOptions): TpmAgentNodeAttestor {
  const { tpm } = o
  const agentKey = agentKeySource(o)
  const akAlg = o.akAlgorithm ?? 'ecc-p256'
  const akPriv = join(o.dataDir, 'ak.priv')
  const akPub = join(o.dataDir, 'ak.pub')
  let ekSeen: EkSeen | undefined
  let akBlob: KeyBlob | undefined

  // An AK this process made for an attempt that has not got through the TPM's part yet. It goes to
  // disk only then (persistAk): a failed attempt leaves no AK files, and the stored AK (the one
  // the working identity was attested with) is replaced only by an AK that did its job.
  let pendingAk: KeyBlob | undefined

  // The AK and (a share of) the agent key the last payload loaded, owned here until its challenge
  // takes them over. Not the SRK: flushed at the payload's end, so the round trip holds two slots
  // (swtpm has three and no resource manager), and the answer loads nothing. Offered to be
  // flushed if another load finds no free slot meanwhile (respond then loads them again).
  let held: Held | undefined
  // An SRK reference handed over by key generation, owned here until a payload takes it.
  const adopted = new AdoptedSrk(tpm)
  const takeHeld = () => {
    const h = held
    held = undefined
    if (h) {
      clearTimeout(h.timer)
      h.withdraw()
    }
    return h
  }
  const release = releaseHeld

  /** The stored AK, loaded, when it is of the right algorithm and this TPM's; else a new one. */
  const loadAk = async (srk: KeyHandle): Promise<{ blob: KeyBlob; ak: KeyHandle }> => {
    let stored: KeyBlob | undefined
    try {
      stored = {
        private: new Uint8Array(await readFile(akPriv)),
        public: new Uint8Array(await readFile(akPub)),
      }
      if (keyAlgorithmLabel(parseTpm2bPublic(stored.public)) !== akAlg) stored = undefined
    } catch (err) {
      if (errCode(err) !== 'ENOENT' && errCode(err) !== 'ERR_TPM_STRUCTURE') throw err
      stored = undefined
    }
    for (const blob of [stored, pendingAk]) {
      if (!blob) continue
      try {
        return { blob, ak: await tpm.loadKey(srk, blob) }
      } catch (err) {
        // Only "this blob is not this TPM's" replaces it; a TPM that is down or busy does not.
        if (!blobRejected(err)) throw err
      }
    }
    pendingAk = await createAk(tpm, srk, akAlg)
    return { blob: pendingAk, ak: await tpm.loadKey(srk, pendingAk) }
  }

  /** Stores the AK an attempt used, if it is new. Private first, both via rename. */
  const persistAk = async (blob: KeyBlob): Promise<void> => {
    if (blob !== pendingAk) return
    await mkdir(o.dataDir, { recursive: true, mode: 0o700 })
    const suffix = `.${randomBytes(6).toString('hex')}.tmp`
    try {
      await writeFile(`${akPriv}${suffix}`, blob.private, { mode: 0o600, flag: 'wx' })
      await chmod(`${akPriv}${suffix}`, 0o600)
      await writeFile(`${akPub}${suffix}`, blob.public, { mode: 0o644, flag: 'wx' })
      // A crash between the renames leaves a new private with the old public: that pair does not
      // load, so the next attempt makes a new AK.
      await rename(`${akPriv}${suffix}`, akPriv)
      await rename(`${akPub}${suffix}`, akPub)
      pendingAk = undefined
    } finally {
      await rm(`${akPriv}${suffix}`, { force: true })
      await rm(`${akPub}${suffix}`, { force: true })
    }
  }

  const chooseSlot = (nv: ReadonlySet<number>): EkSlot => {
    if (o.ekAlgorithm) return EK_SLOTS.find((s) => s.algorithm === o.ekAlgorithm)!
    return EK_SLOTS.find((s) => nv.has(s.certIndex)) ?? EK_SLOTS[0]!
  }

  return {
    kind: 'NodeAttestor',
    name: TPM,
    payload() {
      // The TPM lock is taken before anything is awaited: the CSR for this attempt is signed in
      // the same turn (attestParams), and it must come after the agent key is held, to borrow it.
      const field = agentKey.payloadField()
      field.catch(() => undefined) // awaited below, under the lock
      return withTpm(tpm, async () => {
        const { field: agentKeyField, blob: keyBlob } = await field
        // A payload before the last one's challenge: that attempt is over.
        await release(takeHeld())
        const nv = new Set(await tpm.listHandles(0x01000000))
        const persistent = await tpm.listHandles(0x81000000)
        const s = chooseSlot(nv)
        const ekCert = nv.has(s.certIndex)
          ? extractDerCertificate(await tpm.nvReadAll(s.certIndex))
          : undefined
        const ekChain: Uint8Array[] = []
        for (const idx of [...nv].filter((h) => h >= CHAIN_FIRST && h <= CHAIN_LAST).sort()) {
          ekChain.push(...splitDerCertificates(await tpm.nvReadAll(idx)))
        }
        if (ekChain.length > MAX_CHAIN) {
          // The server refuses longer chains before parsing them; say so here, where it is fixable.
          throw new TpmAttestationError(
            'chain',
            `this TPM's NV holds ${ekChain.length} EK intermediates; the protocol carries at most ${MAX_CHAIN}`,
          )
        }
        // Before the SRK and AK: a recreated EK needs a slot of its own for a moment.
        const ek = await seeEk(tpm, s, persistent, o.persistEk === true)
        ekSeen = ek
        const given = adopted.take()
        let srk: KeyHandle
        if (given && tpm.isLoaded(given)) srk = given
        else {
          // Gone with a reconnect (its dispose releases nothing then): a fresh one.
          await given?.dispose()
          srk = await openSrk(tpm)
        }
        let loaded: { blob: KeyBlob; ak: KeyHandle }
        let key: KeyHandle | undefined
        try {
          loaded = await loadAk(srk)
          try {
            if (keyBlob) key = await tpm.loadShared(srk, keyBlob)
          } catch (err) {
            await loaded.ak.dispose()
            throw err
          }
        } finally {
          await srk.dispose()
        }
        akBlob = loaded.blob
        const offers = [loaded.ak, ...(key ? [key] : [])].map((x) => tpm.yieldWhenFull(x))
        const h = {
          ak: loaded.ak,
          key,
          keyBlob,
          timer: setTimeout(() => void expire(h), HOLD_MS),
          withdraw: () => {
            for (const w of offers) w()
          },
        }
        h.timer.unref()
        held = h
        return encodePayload({
          version: 1,
          ...(ekCert ? { ekCert } : {}),
          ...(ekChain.length ? { ekChain } : {}),
          ekPublic: tpm2b(ek.area.public.raw),
          akPublic: loaded.blob.public,
          ...agentKeyField,
        })
      })
    },

    async respond(challengeBytes) {
      const c = parseChallenge(challengeBytes)
      let selection: PcrSelection
      try {
        selection = parsePcrSpec(c.pcrs)
      } catch (err) {
        throw new TpmAttestationError('challenge', `PCR selection: ${(err as Error).message}`)
      }
      if (!ekSeen || !akBlob) {
        throw new TpmAttestationError('challenge', 'a challenge came before the payload was made')
      }
      const ekWas = ekSeen
      const ak0 = akBlob
      // Read before the TPM work: the log is of this boot, so it cannot change under the quote
      // (the kernel only appends to the runtime IMA log, which is another file).
      const eventLog = c.eventLog
        ? await readEventLog(o.eventLogPath ?? DEFAULT_EVENT_LOG_PATH)
        : undefined
      const proof = await agentKey.forChallenge(c.nonce)
      // The answer is handed over before the flushes, which go on under the lock while it travels
      // (end() and the next attempt queue behind them). A flush that fails then fails nothing: the
      // handle is the connection's to drop, as after a reconnect.
      return new Promise<Uint8Array>((resolve, reject) => {
        withTpm(tpm, async () => {
          // A key made since the payload handed its SRK over: it must not hold a slot from the EK.
          await adopted.release()
          // Slot order for a 3-object TPM: AK+key held (the SRK went after the payload), then the EK.
          let h = takeHeld()
          let ak: KeyHandle | undefined
          let key: KeyHandle | undefined
          let prep: Prepared | undefined
          let ownEk: KeyHandle | undefined
          try {
            if (
              h &&
              tpm.isLoaded(h.ak) &&
              (h.key ? tpm.isLoaded(h.key) && sameBlob(proof.blob, h.keyBlob) : !proof.blob)
            ) {
              ;({ ak, key } = h)
              prep = h.prepared
              h.prepared = undefined
            } else {
              // Lost with a reconnect, expired, or another key: load what the answer needs.
              const stale = h
              h = undefined
              await release(stale)
              await using srk = await openSrk(tpm)
              ak = await tpm.loadKey(srk, ak0)
              if (proof.blob) key = await tpm.loadKey(srk, proof.blob)
            }
            h = undefined
            if (prep && !stillUsable(tpm, prep)) {
              await disposePrepared(prep)
              prep = undefined
            }
            if (!prep?.ek) {
              ownEk = ekWas.persistent
                ? await tpm.persistentKeyOf(ekWas.slot.persistentHandle, ekWas.area)
                : await openEk(tpm, ekWas.slot.algorithm)
            }
            const ek = prep?.ek ?? ownEk!
            const secret = await tpm.activateCredential(
              ak,
              ek,
              c.credentialBlob,
              c.encryptedSecret,
              prep?.session,
            )
            // A recreated EK goes before the quote (3 slots); a persistent one's reference waits.
            if (ownEk && !ownEk.persistent) {
              await ownEk.dispose()
              ownEk = undefined
            }
            // PCRs can move between the quote and the read: read after it until the values are
            // the ones it signed (its pcrDigest), quoting again if an extend came between.
            let quote = await tpm.quote(ak, proof.qualifying, selection)
            let values = await tpm.pcrRead(selection)
            for (let i = 0; i < 3 && !quoteCovers(quote, values); i++) {
              quote = await tpm.quote(ak, proof.qualifying, selection)
              values = await tpm.pcrRead(selection)
            }
            const certify = key ? await tpm.certify(key, ak, c.nonce) : undefined
            await persistAk(ak0)
            resolve(
              encodeResponse({
                version: 1,
                secret,
                quoteMessage: quote.message,
                quoteSignature: quote.signature,
                pcrValues: toWire(values),
                ...(certify
                  ? { certifyMessage: certify.message, certifySignature: certify.signature }
                  : {}),
                ...(eventLog ? { eventLog } : {}),
              }),
            )
          } finally {
            try {
              await disposePrepared(prep)
              await ownEk?.dispose()
              await release(h)
              await key?.dispose()
            } finally {
              await ak?.dispose()
            }
          }
        }).catch(reject)
      })
    },

    end: () =>
      withTpm(tpm, async () => {
        await adopted.release()
        await release(takeHeld())
      }).catch(() => undefined),

    payloadSent() {
      // While the payload travels and the server checks it, the TPM is idle: make what the answer
      // needs whatever the challenge says. Failure costs nothing: the answer then does it itself.
      const h = held
      const ekWas = ekSeen
      if (!h || !ekWas) return
      void withTpm(tpm, async () => {
        // Under the lock, as every release is: taken or released meanwhile means not wanted.
        if (held === h) h.prepared = await prepareAnswer(tpm, ekWas)
      }).catch(() => undefined)
    },

    adoptSrk: (srk) => adopted.adopt(srk),
  }

  /** An attempt that got no challenge in time: its SRK and AK go (under the TPM lock). */
  async function expire(h: NonNullable<typeof held>): Promise<void> {
    await withTpm(tpm, async () => {
      if (held !== h) return
      await release(takeHeld())
    }).catch(() => undefined)
  }
}
