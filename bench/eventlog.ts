/**
 * Measured boot cost on the server, one core, in one run: verification of a quote alone against
 * the same quote plus a 200-event boot log (gunzip, parse, replay of the sha256 bank on PCRs 0-9,
 * fact derivation, reference-state check, selectors), as the TPM attestor does it.
 *
 * The log is the real Ubuntu 21.04 GCP log (105 events) with 95 GRUB-style EV_IPL events added in
 * PCRs 8 and 9, so 200 events of realistic sizes. The quote is a TPMS_ATTEST over sha256:0-9 with
 * the replayed values, signed by a software ECDSA P-256 AK: byte for byte the structure a TPM
 * signs, and the verifier cannot tell the difference (so no swtpm is needed to time the server).
 *
 * Run: npm run build && node dist/bench/eventlog.js   (window per case: BENCH_WINDOW_MS, default 3000)
 */
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { type EventLogConfig, verifyEventLog } from '../src/attestors/tpm/eventlog.js'
import { packageRoot } from '../src/common/package-root.js'
import { encodeEventLog } from '../src/tpm/eventlog/encode.js'
import { parseEventLog } from '../src/tpm/eventlog/parse.js'
import { parseReferenceState, type ReferenceState } from '../src/tpm/eventlog/reference.js'
import { replayBank } from '../src/tpm/eventlog/replay.js'
import { EV, type LogEvent } from '../src/tpm/eventlog/types.js'
import { marshalPcrSelection } from '../src/tpm/structures/pcr.js'
import { marshalSignature } from '../src/tpm/structures/signature.js'
import { verifyQuote } from '../src/tpm/verify.js'

const WINDOW_MS = Number(process.env.BENCH_WINDOW_MS ?? 3000)
const SHA1 = 0x0004
const SHA256 = 0x000b
const SHA384 = 0x000c
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

function rate(fn: () => void, ms = WINDOW_MS): number {
  const warm = performance.now() + ms / 4
  while (performance.now() < warm) fn()
  const start = performance.now()
  let n = 0
  while (performance.now() < start + ms) {
    fn()
    n++
  }
  return (n / (performance.now() - start)) * 1000
}

function bootLog() {
  const path = join(packageRoot(import.meta.url), 'test', 'fixtures', 'eventlogs')
  const log = parseEventLog(
    new Uint8Array(readFileSync(join(path, 'ubuntu_2104_shielded_vm_no_secure_boot_eventlog'))),
  )
  const events: LogEvent[] = [...log.events]
  for (let i = events.length; i < 200; i++) {
    const cmd = `setparams 'Ubuntu, entry ${i}'; insmod part_gpt; search --no-floppy --fs-uuid`
    const data = new Uint8Array(Buffer.from(`grub_cmd: ${cmd}`))
    const hashed = (alg: string) => new Uint8Array(createHash(alg).update(cmd).digest())
    events.push({
      index: i + 1,
      pcr: i % 2 === 0 ? 8 : 9,
      type: EV.IPL,
      data,
      digests: new Map([
        [SHA1, hashed('sha1')],
        [SHA256, hashed('sha256')],
        [SHA384, hashed('sha384')],
      ]),
    })
  }
  return { ...log, events }
}

function main(): void {
  const log = bootLog()
  const raw = encodeEventLog(log)
  const compressed = new Uint8Array(gzipSync(raw, { level: 9 }))
  const replayed = replayBank(parseEventLog(raw), SHA256)
  const values = new Map(PCRS.map((p) => [p, replayed.get(p) ?? new Uint8Array(32)]))
  const quoted = new Map([[SHA256, values]])

  // A TPMS_ATTEST quote over sha256:0-9, signed like a TPM's ECDSA P-256 AK signs it.
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const nonce = new Uint8Array(randomBytes(32))
  const digest = createHash('sha256')
  for (const p of PCRS) digest.update(values.get(p)!)
  const d = digest.digest()
  const head = Buffer.alloc(4 + 2 + 2 + 2)
  head.writeUInt32BE(0xff544347, 0)
  head.writeUInt16BE(0x8018, 4) // TPM_ST_ATTEST_QUOTE
  head.writeUInt16BE(0, 6) // qualifiedSigner: empty
  head.writeUInt16BE(nonce.length, 8)
  const clock = Buffer.alloc(17 + 8)
  clock.writeBigUInt64BE(123456n, 0)
  clock[16] = 1
  const dlen = Buffer.alloc(2)
  dlen.writeUInt16BE(d.length)
  const message = new Uint8Array(
    Buffer.concat([
      head,
      nonce,
      clock,
      marshalPcrSelection([{ hashAlg: SHA256, pcrs: PCRS }]),
      dlen,
      d,
    ]),
  )
  const p1363 = sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' })
  const signature = marshalSignature({
    sigAlg: 0x0018,
    hashAlg: SHA256,
    r: new Uint8Array(p1363.subarray(0, 32)),
    s: new Uint8Array(p1363.subarray(32)),
  })
  const quote = () =>
    verifyQuote({
      akPublic: publicKey,
      message,
      signature,
      nonce,
      pcrValues: quoted,
      requiredPcrs: [{ hashAlg: SHA256, pcrs: PCRS }],
    })
  const facts = verifyEventLog(
    { bank: SHA256, pcrs: PCRS, referencePath: undefined, reference: undefined },
    undefined,
    compressed,
    quote().pcrs!,
  ).facts
  const ref = parseReferenceState({
    bootloader_digests: facts.bootApps.slice(0, -1).map((a) => a.digest),
    kernel_digests: [facts.bootApps.at(-1)!.digest],
    kernel_cmdlines: [facts.kernelCmdline!.text],
  }) as ReferenceState
  const cfg: EventLogConfig = { bank: SHA256, pcrs: PCRS, referencePath: undefined, reference: ref }
  const both = () => verifyEventLog(cfg, ref, compressed, quote().pcrs!)

  const quoteRate = rate(quote)
  const bothRate = rate(both)
  const logRate = rate(() => verifyEventLog(cfg, ref, compressed, quoted))
  console.log(
    JSON.stringify({
      events: log.events.length,
      log_bytes: raw.length,
      gzip_bytes: compressed.length,
      selectors: both().selectors.length,
      quote_only_per_s: Math.round(quoteRate),
      quote_plus_log_per_s: Math.round(bothRate),
      log_only_per_s: Math.round(logRate),
      ratio_quote_plus_log_to_quote: Number((bothRate / quoteRate).toFixed(3)),
      node: process.version,
    }),
  )
}

main()
