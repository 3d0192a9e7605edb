import type { TpmContext } from './context.js'
import { readEndorsementKeys } from './ek.js'

const hex = (n: number, width = 8) => `0x${n.toString(16).padStart(width, '0')}`

/** What `spiffe-edge tpm info --json` prints: stable snake_case keys for fleet tooling. */
export interface TpmInfoReport {
  readonly tcti: string
  readonly manufacturer: string
  readonly manufacturer_id: string
  readonly vendor_string: string
  readonly firmware_version: string
  readonly firmware_version_raw: readonly [string, string]
  readonly spec: { readonly family: string; readonly level: number; readonly revision: string }
  readonly endorsement_keys: readonly {
    readonly algorithm: string
    readonly certificate_nv_index: string
    readonly certificate: {
      readonly subject: string
      readonly issuer: string
      readonly serial_number: string
      readonly not_before: string
      readonly not_after: string
      readonly public_key_sha256: string
    } | null
    readonly certificate_error?: string
    readonly persistent_handle: string | null
    readonly public_key_sha256: string | null
    readonly public_key_source: 'tpm' | 'certificate' | null
    readonly certificate_matches_key: boolean | null
  }[]
}

export async function tpmInfo(tpm: TpmContext): Promise<TpmInfoReport> {
  const fixed = await tpm.fixedProperties()
  const eks = await readEndorsementKeys(tpm)
  return {
    tcti: tpm.tcti,
    manufacturer: fixed.manufacturer,
    manufacturer_id: hex(fixed.manufacturerId),
    vendor_string: fixed.vendorString,
    firmware_version: fixed.firmwareVersion,
    firmware_version_raw: [hex(fixed.firmwareVersion1), hex(fixed.firmwareVersion2)],
    spec: {
      family: fixed.specFamily,
      level: fixed.specLevel,
      revision: (fixed.specRevision / 100).toFixed(2),
    },
    endorsement_keys: eks.map((ek) => ({
      algorithm: ek.algorithm,
      certificate_nv_index: hex(ek.certificateIndex),
      certificate: ek.certificate
        ? {
            subject: ek.certificate.subject,
            issuer: ek.certificate.issuer,
            serial_number: ek.certificate.serialNumber,
            not_before: ek.certificate.notBefore,
            not_after: ek.certificate.notAfter,
            public_key_sha256: ek.certificate.publicKeySha256,
          }
        : null,
      ...(ek.certificateError ? { certificate_error: ek.certificateError } : {}),
      persistent_handle: ek.persistentHandle === undefined ? null : hex(ek.persistentHandle),
      public_key_sha256: ek.publicKeySha256 ?? null,
      public_key_source: ek.publicKeySource ?? null,
      certificate_matches_key: ek.certificateMatchesKey ?? null,
    })),
  }
}

/** The human-readable form of the report. */
export function formatTpmInfo(r: TpmInfoReport): string {
  const lines = [
    `TPM at ${r.tcti}`,
    `  manufacturer:     ${r.manufacturer} (${r.manufacturer_id})`,
    `  vendor string:    ${r.vendor_string || '(none)'}`,
    `  firmware version: ${r.firmware_version} (${r.firmware_version_raw.join(' ')})`,
    `  spec:             TPM ${r.spec.family} level ${r.spec.level} revision ${r.spec.revision}`,
    '',
    r.endorsement_keys.length === 0
      ? 'No EK certificate in NV and no persistent EK at the standard handles.'
      : 'Endorsement keys:',
  ]
  for (const ek of r.endorsement_keys) {
    lines.push(`  ${ek.algorithm}`)
    if (ek.certificate) {
      lines.push(`    certificate (NV ${ek.certificate_nv_index})`)
      lines.push(
        `      subject: ${ek.certificate.subject || '(empty: the identity is in the SAN)'}`,
      )
      lines.push(`      issuer:  ${ek.certificate.issuer}`)
      lines.push(`      valid:   ${ek.certificate.not_before} .. ${ek.certificate.not_after}`)
    } else {
      lines.push(
        `    certificate (NV ${ek.certificate_nv_index}): ${ek.certificate_error ?? 'absent'}`,
      )
    }
    lines.push(`    persistent EK:   ${ek.persistent_handle ?? 'not persisted'}`)
    lines.push(`    public key sha256 (${ek.public_key_source}): ${ek.public_key_sha256}`)
    if (ek.certificate_matches_key !== null) {
      lines.push(
        `    certificate matches the TPM's EK: ${ek.certificate_matches_key ? 'yes' : 'NO'}`,
      )
    }
  }
  return `${lines.join('\n')}\n`
}
