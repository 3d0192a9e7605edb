import { TpmContext } from '../tpm/context.js'
import { formatTpmInfo, tpmInfo } from '../tpm/info.js'
import type { Group } from './command.js'
import { checkQuoteCommand } from './tpm-check-quote.js'
import { eventlogGroup } from './tpm-eventlog.js'
import { quoteCommand } from './tpm-quote.js'

export const tpmGroup: Group = {
  kind: 'group',
  name: 'tpm',
  summary: 'TPM diagnostics for an operator on a device',
  children: [
    {
      kind: 'command',
      name: 'info',
      summary: 'manufacturer, firmware, EK certificates in NV and EK public key hashes',
      details:
        'The EK hash is SHA-256 over the EK public key as DER SubjectPublicKeyInfo, the same value as\n' +
        '`tpm2_readpublic -c 0x81010001 -f der -o ek.der && sha256sum ek.der`.',
      options: {
        tcti: {
          type: 'string',
          description: 'TPM to talk to (device:/dev/tpmrm0, swtpm:host=…,port=…, mssim:…)',
          default: 'device:/dev/tpmrm0',
        },
        json: { type: 'boolean', description: 'print one JSON object instead of text' },
      },
      async run(values, io) {
        const tcti = String(values.tcti ?? io.env.TPM2TOOLS_TCTI ?? 'device:/dev/tpmrm0')
        await using tpm = await TpmContext.open(tcti)
        const report = await tpmInfo(tpm)
        io.out(values.json ? `${JSON.stringify(report)}\n` : formatTpmInfo(report))
        return 0
      },
    },
    quoteCommand,
    checkQuoteCommand,
    eventlogGroup,
  ],
}
