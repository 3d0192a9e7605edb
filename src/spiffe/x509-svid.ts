import { getRandomValues, type KeyObject, X509Certificate as NodeX509 } from 'node:crypto'
import { x509 } from '../common/x509.js'
import * as der from './der.js'
import { SvidError } from './errors.js'
import { SpiffeId, type TrustDomain } from './id.js'
import { type Signer, webCryptoAlgorithm } from './signer.js'
import { signerCrypto, signerCryptoKey } from './webcrypto.js'
import { isCa, KU, parseCert, uriSans } from './x509-cert.js'

type PeculiarCert = InstanceType<typeof x509.X509Certificate>

// Validation lives in x509-svid-validate.ts; re-exported so callers keep one module.
export { type ValidatedX509Svid, validateX509Svid } from './x509-svid-validate.js'

/**
 * X509-SVID issuance per the X509-SVID spec. CA certificates are built with @peculiar/x509 and
 * leaves encoded directly (hot path), both signed through a Signer, so CA keys may live in a TPM or
 * HSM.
 */

export interface X509Issuer {
  /** The issuing CA certificate, DER. */
  readonly certificate: Uint8Array
  /** Signs with the private key of `certificate`. */
  readonly signer: Signer
}

export interface IssueX509CaParams {
  readonly subjectPublicKey: KeyObject
  readonly trustDomain: TrustDomain
  /** The parent CA; omit (and pass selfSigner) for a self-signed root. */
  readonly issuer?: X509Issuer
  /** The new CA's own signer, for a self-signed root. */
  readonly selfSigner?: Signer
  readonly notBefore: Date
  readonly notAfter: Date
  readonly serial?: bigint
  /** RFC 4514 string; default C=US, O=SPIFFE, serialNumber=<serial>. */
  readonly subject?: string
}

export interface IssueX509SvidParams {
  readonly subjectPublicKey: KeyObject
  readonly spiffeId: SpiffeId
  readonly dnsNames?: readonly string[]
  readonly issuer: X509Issuer
  readonly notBefore: Date
  readonly notAfter: Date
  readonly serial?: bigint
}

type CreateParams = Parameters<typeof x509.X509CertificateGenerator.create>[0]
type SigningKey = Extract<CreateParams, { signingKey: unknown }>['signingKey']
type X509Crypto = Parameters<typeof x509.X509CertificateGenerator.create>[1]

function spki(key: KeyObject): Uint8Array {
  return der.spkiOf(key)
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function sameKey(a: KeyObject, b: KeyObject): boolean {
  return sameBytes(spki(a), spki(b))
}

// serialHex, earlier, checkTimes, issuerKeyId and prepareIssuer are shared with x509-leaf.ts.

/** A positive serial of at most 20 octets (RFC 5280 §4.1.2.2), random when not given. */
export function serialHex(serial: bigint | undefined): string {
  let s = serial
  if (s === undefined) {
    const r = getRandomValues(new Uint8Array(16))
    r[0] = r[0]! & 0x7f // positive, and never needs a leading zero octet
    s = BigInt(`0x${Buffer.from(r).toString('hex')}`)
    if (s === 0n) s = 1n
  }
  if (s <= 0n || s >= 1n << 159n) {
    throw new SvidError('serial number must be positive and fit in 20 octets')
  }
  const hex = s.toString(16)
  return hex.length % 2 === 0 ? hex : `0${hex}`
}

export function earlier(a: Date, b: Date): Date {
  return a.getTime() < b.getTime() ? a : b
}

export function checkTimes(notBefore: Date, notAfter: Date): void {
  if (Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) {
    throw new SvidError('notBefore and notAfter must be valid dates')
  }
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new SvidError('notAfter must be after notBefore (after clamping to the issuer)')
  }
}

/** The issuer's subject key identifier (hex), from its SKI extension or computed as RFC 5280. */
export async function issuerKeyId(issuer: PeculiarCert): Promise<string> {
  const ski = issuer.getExtension(x509.SubjectKeyIdentifierExtension)
  if (ski !== null) return ski.keyId
  return Buffer.from(await issuer.publicKey.getKeyIdentifier()).toString('hex')
}

export interface PreparedIssuer {
  cert: PeculiarCert
  signer: Signer
  notAfter: Date
}

export function prepareIssuer(issuer: X509Issuer, td: TrustDomain, what: string): PreparedIssuer {
  const { p, n } = parseCert(issuer.certificate, 'issuer certificate')
  if (!isCa(p)) throw new SvidError(`issuer certificate is not a CA (cA=true, keyCertSign)`)
  if (!sameKey(n.publicKey, issuer.signer.publicKey)) {
    throw new SvidError("issuer signer's key does not match the issuer certificate")
  }
  // A CA that names its trust domain must not issue for another one.
  for (const uri of uriSans(p)) {
    if (!uri.startsWith('spiffe://')) continue
    const caId = SpiffeId.parse(uri)
    if (!caId.memberOf(td)) {
      throw new SvidError(`a CA of ${caId.trustDomain} cannot issue ${what} in ${td}`)
    }
  }
  // @peculiar/x509's view for what issuance reads beyond the SPIFFE fields (subject name, SKI).
  const cert = new x509.X509Certificate(issuer.certificate)
  return { cert, signer: issuer.signer, notAfter: p.notAfter }
}

async function sign(
  params: {
    serial: string
    subject: string | x509.JsonName
    issuerName: string | x509.JsonName | InstanceType<typeof x509.Name>
    notBefore: Date
    notAfter: Date
    subjectPublicKey: KeyObject
    extensions: InstanceType<typeof x509.Extension>[]
  },
  signer: Signer,
): Promise<Uint8Array> {
  const crypto = signerCrypto(signer) as unknown as X509Crypto
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: params.serial,
      subject: params.subject,
      issuer: params.issuerName,
      notBefore: params.notBefore,
      notAfter: params.notAfter,
      publicKey: spki(params.subjectPublicKey),
      signingKey: signerCryptoKey(signer) as unknown as SigningKey,
      signingAlgorithm: webCryptoAlgorithm(signer.keyType),
      extensions: params.extensions,
    },
    crypto,
  )
  const der = new Uint8Array(cert.rawData)
  // A hardware signer returning garbage should fail here, not in every relying party.
  if (!new NodeX509(der).verify(signer.publicKey)) {
    throw new SvidError('the signer produced a signature that does not verify')
  }
  return der
}

/**
 * Issues a signing CA for `trustDomain`: self-signed (selfSigner) or under `issuer`. The CA carries
 * the path-less ID spiffe://<td> as its URI SAN, as the spec recommends for signing certificates.
 */
export async function issueX509Ca(params: IssueX509CaParams): Promise<Uint8Array> {
  const { issuer, selfSigner, trustDomain: td } = params
  if ((issuer === undefined) === (selfSigner === undefined)) {
    throw new SvidError('issueX509Ca needs exactly one of issuer and selfSigner')
  }
  if (selfSigner !== undefined && !sameKey(selfSigner.publicKey, params.subjectPublicKey)) {
    throw new SvidError("a self-signed CA's selfSigner must hold the subject key")
  }
  const parent = issuer === undefined ? undefined : prepareIssuer(issuer, td, 'a CA')
  const notAfter = parent ? earlier(parent.notAfter, params.notAfter) : params.notAfter
  checkTimes(params.notBefore, notAfter)
  const serial = serialHex(params.serial)
  const subject: string | x509.JsonName = params.subject ?? [
    { C: ['US'] },
    { O: ['SPIFFE'] },
    // The serial in the subject keeps successive CAs apart for path builders that match names.
    { '2.5.4.5': [BigInt(`0x${serial}`).toString()] },
  ]
  const pub = spki(params.subjectPublicKey)
  const extensions: InstanceType<typeof x509.Extension>[] = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(KU.keyCertSign | KU.cRLSign, true),
    // The spec makes the URI SAN critical when the subject is empty.
    new x509.SubjectAlternativeNameExtension(
      [{ type: 'url', value: td.idString() }],
      params.subject === '',
    ),
    await x509.SubjectKeyIdentifierExtension.create(pub, false),
  ]
  if (parent) {
    extensions.push(new x509.AuthorityKeyIdentifierExtension(await issuerKeyId(parent.cert)))
  }
  return sign(
    {
      serial,
      subject,
      issuerName: parent ? parent.cert.subjectName : subject,
      notBefore: params.notBefore,
      notAfter,
      subjectPublicKey: params.subjectPublicKey,
      extensions,
    },
    parent ? parent.signer : selfSigner!,
  )
}

// Leaf issuance (the server's hot path) lives in x509-leaf.ts; re-exported so callers keep one module.
export { issueX509Svid, issueX509Svids } from './x509-leaf.js'
