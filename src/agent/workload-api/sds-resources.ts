/**
 * Which SDS secrets a request names and what each contains, from one X509Update: SPIRE's naming
 * (an SVID by its SPIFFE ID, the first one also as `default`; a bundle by `spiffe://<td>`, the
 * own one also as `ROOTCA`, all of them together as `ALL`). Pure, so the naming rules are tested
 * without a socket; the stream logic around it is in sds.ts.
 */
import { createPrivateKey } from 'node:crypto'
import { certificateToPem } from '../../spiffe/bundle.js'
import { SpiffeId } from '../../spiffe/id.js'
import { GrpcStatus, WorkloadStatusError } from './errors.js'
import {
  type DiscoveryRequestMsg,
  type DiscoveryResponseMsg,
  type SdsCodec,
  SECRET_TYPE_URL,
  type SecretMsg,
  SPIFFE_VALIDATOR_NAME,
} from './sds-proto.js'
import type { X509Update } from './types.js'

export interface SdsNames {
  /** SPIRE's default_svid_name: the first SVID under this name. */
  readonly defaultSvidName: string
  /** SPIRE's default_bundle_name: the own trust domain's bundle under this name. */
  readonly defaultBundleName: string
  /** SPIRE's default_all_bundles_name: every bundle in one SPIFFE validator config. */
  readonly defaultAllBundlesName: string
  /** SPIRE's disable_spiffe_cert_validation: always trusted_ca, never the SPIFFE validator. */
  readonly disableSpiffeCertValidation: boolean
}

export const DEFAULT_SDS_NAMES: SdsNames = {
  defaultSvidName: 'default',
  defaultBundleName: 'ROOTCA',
  defaultAllBundlesName: 'ALL',
  disableSpiffeCertValidation: false,
}

/**
 * Bounds on one request's resource names: each name is a lookup and possibly a secret in the
 * answer, so a caller must not be able to make the request (or our answer) large.
 */
export const SDS_LIMITS = { maxNames: 64, maxNameBytes: 2048 } as const

/** Checks a request before anything is built from it (INVALID_ARGUMENT otherwise). */
export function checkSdsRequest(req: DiscoveryRequestMsg): void {
  if (req.typeUrl !== '' && req.typeUrl !== SECRET_TYPE_URL) {
    throw new WorkloadStatusError(
      GrpcStatus.INVALID_ARGUMENT,
      `unsupported type_url ${JSON.stringify(req.typeUrl.slice(0, 200))}: SDS serves ${SECRET_TYPE_URL}`,
    )
  }
  if (req.resourceNames.length > SDS_LIMITS.maxNames) {
    throw new WorkloadStatusError(
      GrpcStatus.INVALID_ARGUMENT,
      `too many resource names: ${req.resourceNames.length} > ${SDS_LIMITS.maxNames}`,
    )
  }
  for (const n of req.resourceNames) {
    const len = Buffer.byteLength(n, 'utf8')
    if (len > SDS_LIMITS.maxNameBytes) {
      throw new WorkloadStatusError(
        GrpcStatus.INVALID_ARGUMENT,
        `a resource name is ${len} bytes, more than ${SDS_LIMITS.maxNameBytes}`,
      )
    }
  }
}

/**
 * Envoy 1.18 and later have the SPIFFE validator extension; older ones (and clients that do not
 * say) get trusted_ca, as SPIRE decides from the node's user_agent_build_version.
 */
export function supportsSpiffeValidator(req: DiscoveryRequestMsg): boolean {
  const v = req.node?.userAgentBuildVersion?.version
  if (v === undefined) return false
  const major = v.majorNumber ?? 0
  const minor = v.minorNumber ?? 0
  return major > 1 || (major === 1 && minor > 17)
}

const pem = (certs: readonly Uint8Array[]): Buffer =>
  Buffer.from(certs.map((c) => certificateToPem(c)).join(''), 'utf8')

const tdId = (td: string): string => (td.startsWith('spiffe://') ? td : `spiffe://${td}`)

/** Trust domain ID ('spiffe://td') → its X.509 authorities (DER), own first, then sorted. */
function bundlesById(u: X509Update, ownTd: string): Map<string, readonly Uint8Array[]> {
  const out = new Map<string, readonly Uint8Array[]>()
  const own = tdId(ownTd)
  const entries = [...u.bundles].map(([td, c]): [string, readonly Uint8Array[]] => [tdId(td), c])
  entries.sort(([a], [b]) => (a === own ? -1 : b === own ? 1 : a < b ? -1 : a > b ? 1 : 0))
  for (const [id, certs] of entries) if (!out.has(id)) out.set(id, certs)
  return out
}

/**
 * The DiscoveryResponse for `req` from the update `u`: every secret when no names are asked for,
 * else exactly the named ones; a name the workload is not entitled to fails the whole request
 * (SPIRE: InvalidArgument), so Envoy never runs with a half-filled set.
 */
export function buildSdsResponse(
  codec: SdsCodec,
  names: SdsNames,
  ownTd: string,
  req: DiscoveryRequestMsg,
  u: X509Update,
  versionInfo: string,
  nonce: string,
): DiscoveryResponseMsg {
  const wanted = new Set(req.resourceNames.filter((n) => n !== ''))
  const all = wanted.size === 0
  const spiffe = !names.disableSpiffeCertValidation && supportsSpiffeValidator(req)
  const bundles = bundlesById(u, ownTd)
  const ownId = tdId(ownTd)
  const secrets: SecretMsg[] = []

  const validation = (name: string, ids: readonly string[]): SecretMsg => {
    if (!spiffe) {
      if (name === names.defaultAllBundlesName) {
        // trusted_ca cannot say which CA may sign for which trust domain; SPIRE refuses ALL
        // without the validator even when there is one trust domain, and so do we.
        throw new WorkloadStatusError(
          GrpcStatus.INVALID_ARGUMENT,
          `${name} needs Envoy's SPIFFE validator (Envoy 1.18 or later, disable_spiffe_cert_validation off)`,
        )
      }
      return { name, validationContext: { trustedCa: { inlineBytes: pem(bundles.get(ids[0]!)!) } } }
    }
    const trustDomains = ids.map((id) => ({
      name: id.slice('spiffe://'.length),
      trustBundle: { inlineBytes: pem(bundles.get(id)!) },
    }))
    return {
      name,
      validationContext: {
        customValidatorConfig: {
          name: SPIFFE_VALIDATOR_NAME,
          typedConfig: codec.spiffeValidatorAny({ trustDomains }),
        },
      },
    }
  }

  if (bundles.has(ownId)) {
    if (all || wanted.has(ownId)) secrets.push(validation(ownId, [ownId]))
    if (!all && wanted.has(names.defaultBundleName)) {
      secrets.push(validation(names.defaultBundleName, [ownId]))
    }
    if (!all && wanted.has(names.defaultAllBundlesName)) {
      const ids = [...bundles.keys()].sort()
      secrets.push(validation(names.defaultAllBundlesName, ids))
    }
    wanted.delete(ownId)
    wanted.delete(names.defaultBundleName)
    wanted.delete(names.defaultAllBundlesName)
  }
  for (const id of bundles.keys()) {
    if (id === ownId) continue
    if (all || wanted.has(id)) secrets.push(validation(id, [id]))
    wanted.delete(id)
  }
  const served = new Set<string>()
  u.svids.forEach((s, i) => {
    let id: string
    try {
      id = SpiffeId.parse(s.spiffeId).toString()
    } catch {
      return // logged by the Workload API handlers; never served under a bad name
    }
    // Two entries with one SPIFFE ID: Envoy keys secrets by name, so serve the first (sorted) one.
    if (served.has(id)) return
    served.add(id)
    const tls = (name: string): SecretMsg => ({
      name,
      tlsCertificate: {
        certificateChain: { inlineBytes: pem(s.chain) },
        privateKey: { inlineBytes: pkcs8Pem(s.privateKey) },
      },
    })
    if (all || wanted.has(id)) {
      secrets.push(tls(id))
      wanted.delete(id)
    }
    // Also when the same SVID is asked for by its ID too (SPIRE then refuses "default").
    if (!all && i === 0 && wanted.has(names.defaultSvidName)) {
      secrets.push(tls(names.defaultSvidName))
      wanted.delete(names.defaultSvidName)
    }
  })
  if (wanted.size > 0) {
    const list = [...wanted].sort().map((n) => JSON.stringify(n.slice(0, 200)))
    throw new WorkloadStatusError(
      GrpcStatus.INVALID_ARGUMENT,
      `workload is not authorized for the requested identities [${list.join(', ')}]`,
      'register an entry for this workload with that SPIFFE ID, or ask for names it has',
    )
  }
  return {
    versionInfo,
    nonce,
    typeUrl: SECRET_TYPE_URL,
    resources: secrets.map((s) => codec.secretAny(s)),
  }
}

function pkcs8Pem(der: Uint8Array): Buffer {
  const key = createPrivateKey({ key: Buffer.from(der), format: 'der', type: 'pkcs8' })
  return Buffer.from(key.export({ format: 'pem', type: 'pkcs8' }) as string, 'utf8')
}
