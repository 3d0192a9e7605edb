import { createPublicKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { UsageError } from '../errors.js'
import { HASH_ALGS, TPM_ALG } from '../tpm/constants.js'
import { parseAttest } from '../tpm/structures/attest.js'
import {
  formatPcrSpec,
  type PcrValues,
  parsePcrSpec,
  pcrValuesFromConcatenated,
} from '../tpm/structures/pcr.js'
import { verifyQuote } from '../tpm/verify.js'
import { type Leaf, parseHexOption, requireString } from './command.js'

const SIG_NAMES: ReadonlyMap<number, string> = new Map([
  [TPM_ALG.RSASSA, 'rsassa'],
  [TPM_ALG.RSAPSS, 'rsapss'],
  [TPM_ALG.ECDSA, 'ecdsa'],
])

function readInput(path: string, flag: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path))
  } catch (err) {
    throw new UsageError(
      `--${flag} ${path}: ${(err as Error).message}`,
      `pass a readable file to --${flag}`,
    )
  }
}

function readAk(path: string): KeyObject {
  const pem = readInput(path, 'ak')
  try {
    return createPublicKey({ key: Buffer.from(pem), format: 'pem' })
  } catch (err) {
    throw new UsageError(
      `--ak ${path} is not a PEM public key (${(err as Error).message})`,
      'export the AK with `tpm2_readpublic -c ak.ctx -f pem -o ak.pem`',
    )
  }
}

export const checkQuoteCommand: Leaf = {
  kind: 'command',
  name: 'check-quote',
  summary: 'verify a TPM2_Quote (from tpm2_quote) against an AK public key and a nonce',
  details:
    'Checks the signature, the TPM magic and type, that extraData equals the nonce and, with\n' +
    '--pcrs, that the PCR values hash to the quoted pcrDigest. Produce the inputs with\n' +
    '`tpm2_quote -c ak.ctx -l sha256:0,1,7 -q NONCE -m quote.msg -s quote.sig -g sha256` and\n' +
    '`tpm2_pcrread sha256:0,1,7 -o pcrs.bin`.',
  options: {
    ak: { type: 'string', valueName: 'PEM', description: 'AK public key (PEM file)' },
    message: { type: 'string', valueName: 'FILE', description: 'TPMS_ATTEST (tpm2_quote -m)' },
    signature: {
      type: 'string',
      valueName: 'FILE',
      description: 'TPMT_SIGNATURE (tpm2_quote -s)',
    },
    nonce: { type: 'string', valueName: 'HEX', description: 'the qualifying data sent' },
    pcrs: {
      type: 'string',
      valueName: 'FILE',
      description: 'PCR values as tpm2_pcrread -o writes them, in the quoted selection order',
    },
    require: {
      type: 'string',
      valueName: 'SPEC',
      description: 'PCRs the quote must cover, e.g. sha256:0,7',
    },
    json: { type: 'boolean', description: 'print one JSON object instead of text' },
  },
  async run(values, io) {
    const akPublic = readAk(requireString(values, 'ak'))
    const message = readInput(requireString(values, 'message'), 'message')
    const signature = readInput(requireString(values, 'signature'), 'signature')
    const nonce = parseHexOption(requireString(values, 'nonce'), 'nonce')
    const requiredPcrs =
      typeof values.require === 'string' ? parsePcrSpec(values.require) : undefined
    let pcrValues: PcrValues | undefined
    if (typeof values.pcrs === 'string') {
      // Only the layout comes from the unverified message; verifyQuote checks all of it.
      // A message that is not a quote fails verifyQuote with reason 'type' below.
      const attested = parseAttest(message).attested
      const raw = readInput(values.pcrs, 'pcrs')
      if (attested.kind === 'quote') pcrValues = pcrValuesFromConcatenated(attested.pcrSelect, raw)
    }
    const q = verifyQuote({ akPublic, message, signature, nonce, pcrValues, requiredPcrs })
    const clock = q.attest.clockInfo
    const report = {
      ok: true,
      signature_alg: SIG_NAMES.get(q.signature.sigAlg) ?? 'unknown',
      hash_alg: HASH_ALGS.get(q.signature.hashAlg)?.name ?? 'unknown',
      pcr_selection: formatPcrSpec(q.pcrSelect),
      pcr_digest: Buffer.from(q.pcrDigest).toString('hex'),
      pcr_values_checked: pcrValues !== undefined,
      clock: clock.clock.toString(),
      reset_count: clock.resetCount,
      restart_count: clock.restartCount,
      safe: clock.safe,
      firmware_version: `0x${q.attest.firmwareVersion.toString(16)}`,
    }
    io.out(
      values.json
        ? `${JSON.stringify(report)}\n`
        : `quote OK: ${report.signature_alg}-${report.hash_alg} signature, nonce matches, ` +
            `PCRs ${report.pcr_selection || '(none)'} ` +
            `${report.pcr_values_checked ? 'match pcrDigest' : '(values not checked)'}, ` +
            `resetCount ${clock.resetCount}, restartCount ${clock.restartCount}\n`,
    )
    return 0
  },
}
