import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { UsageError } from '../errors.js'
import { type KeyBlob, TpmContext } from '../tpm/context.js'
import { createAk, openSrk } from '../tpm/keys.js'
import { bankName, parsePcrSpec } from '../tpm/structures/pcr.js'
import { publicKeyObject } from '../tpm/structures/public.js'
import type { KeyAlgorithm } from '../tpm/templates.js'
import { type Leaf, parseHexOption, requireString } from './command.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

/**
 * `tpm quote`: an operator's (and a cross-check's) way to get a quote out of a device. The files
 * are in the formats tpm2-tools reads: ak.priv/ak.pub are the TPM2B_PRIVATE/TPM2B_PUBLIC that
 * `tpm2_create -r/-u` write, quote.msg and quote.sig what `tpm2_quote -m/-s` write, pcrs.bin what
 * `tpm2_pcrread -o` writes; so `tpm2_checkquote -u ak.pem -m quote.msg -s quote.sig -q NONCE`
 * and `spiffe-edge tpm check-quote` both verify them.
 */
export const quoteCommand: Leaf = {
  kind: 'command',
  name: 'quote',
  summary: 'quote PCRs with an AK (created once in --out, then reused) and write the evidence',
  details:
    'Writes to --out: ak.priv, ak.pub (key blobs, reused next time), ak.pem, quote.msg (TPMS_ATTEST),\n' +
    'quote.sig (TPMT_SIGNATURE), pcrs.bin (digests in selection order) and pcrs.json.',
  options: {
    tcti: { type: 'string', description: 'TPM to use', default: 'device:/dev/tpmrm0' },
    nonce: { type: 'string', valueName: 'HEX', description: 'qualifying data (1-64 bytes)' },
    pcrs: {
      type: 'string',
      valueName: 'SPEC',
      description: 'PCR selection',
      default: 'sha256:0,1,7',
    },
    out: { type: 'string', valueName: 'DIR', description: 'where the AK and evidence are written' },
    'ak-alg': {
      type: 'string',
      description: 'AK algorithm: ecc-p256 or rsa-2048',
      default: 'ecc-p256',
    },
    json: { type: 'boolean', description: 'print one JSON object instead of text' },
  },
  async run(values, io) {
    const nonce = parseHexOption(requireString(values, 'nonce'), 'nonce')
    const selection = parsePcrSpec(String(values.pcrs))
    const out = requireString(values, 'out')
    const alg = String(values['ak-alg'])
    if (alg !== 'ecc-p256' && alg !== 'rsa-2048') {
      throw new UsageError(`--ak-alg must be ecc-p256 or rsa-2048, got '${alg}'`)
    }
    mkdirSync(out, { recursive: true, mode: 0o700 })
    await using tpm = await TpmContext.open(String(values.tcti))
    await using srk = await openSrk(tpm)
    const privPath = join(out, 'ak.priv')
    const pubPath = join(out, 'ak.pub')
    let blob: KeyBlob
    let created = false
    if (existsSync(privPath) && existsSync(pubPath)) {
      blob = {
        private: new Uint8Array(readFileSync(privPath)),
        public: new Uint8Array(readFileSync(pubPath)),
      }
    } else {
      blob = await createAk(tpm, srk, alg as KeyAlgorithm)
      // The private blob is wrapped by the TPM's SRK: useless elsewhere, but still kept private.
      writeFileSync(privPath, blob.private, { mode: 0o600 })
      writeFileSync(pubPath, blob.public, { mode: 0o644 })
      created = true
    }
    await using ak = await tpm.loadKey(srk, blob)
    const quote = await tpm.quote(ak, nonce, selection)
    const pcrs = await tpm.pcrRead(selection)
    const concatenated: Uint8Array[] = []
    const pcrJson: Record<string, Record<string, string>> = {}
    for (const { hashAlg, pcrs: list } of selection) {
      const bank: Record<string, string> = {}
      for (const p of list) {
        const v = pcrs.get(hashAlg)!.get(p)!
        concatenated.push(v)
        bank[String(p)] = hex(v)
      }
      pcrJson[bankName(hashAlg)] = bank
    }
    const akPem = publicKeyObject(ak.public).export({ type: 'spki', format: 'pem' }).toString()
    writeFileSync(join(out, 'ak.pem'), akPem)
    writeFileSync(join(out, 'quote.msg'), quote.message)
    writeFileSync(join(out, 'quote.sig'), quote.signature)
    writeFileSync(join(out, 'pcrs.bin'), Buffer.concat(concatenated))
    writeFileSync(join(out, 'pcrs.json'), `${JSON.stringify(pcrJson, null, 2)}\n`)
    const summary = {
      out,
      ak_created: created,
      ak_name: hex(ak.name),
      ak_sha256: createHash('sha256')
        .update(publicKeyObject(ak.public).export({ type: 'spki', format: 'der' }))
        .digest('hex'),
      pcrs: String(values.pcrs),
      nonce: hex(nonce),
    }
    io.out(
      values.json
        ? `${JSON.stringify(summary)}\n`
        : `quote written to ${out} (AK ${created ? 'created' : 'reused'}, name ${summary.ak_name})\n`,
    )
    return 0
  },
}
