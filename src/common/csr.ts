/**
 * PKCS#10 CSRs, used only to convey a public key with proof of possession (as SPIRE does): the
 * server takes the key and ignores every other CSR field. Creating one goes through a Signer, so
 * the key may be in a TPM or HSM.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'
import type { Signer } from '../keymanager/types.js'
import { webCryptoAlgorithm } from '../keymanager/types.js'
import { signerCrypto, signerCryptoKey } from '../keymanager/webcrypto.js'
import { x509 } from './x509.js'

export async function createCsr(signer: Signer): Promise<Uint8Array> {
  const crypto = signerCrypto(signer)
  const publicKey = await globalThis.crypto.subtle.importKey(
    'spki',
    signer.publicKey.export({ type: 'spki', format: 'der' }),
    webCryptoAlgorithm(signer.keyType),
    true,
    ['verify'],
  )
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: 'O=spiffe-edge',
      keys: { privateKey: signerCryptoKey(signer), publicKey },
      signingAlgorithm: webCryptoAlgorithm(signer.keyType),
    },
    crypto,
  )
  return new Uint8Array(csr.rawData)
}

export class CsrError extends SpiffeEdgeError {
  constructor(message: string) {
    super('ERR_PROTOCOL', message, { remedy: 'send a DER PKCS#10 CSR signed by the key it names' })
  }
}

/** The CSR's public key, after checking the CSR is signed by it (proof of possession). */
export async function publicKeyFromCsr(der: Uint8Array): Promise<KeyObject> {
  let csr: InstanceType<typeof x509.Pkcs10CertificateRequest>
  try {
    csr = new x509.Pkcs10CertificateRequest(der)
  } catch (err) {
    throw new CsrError(`CSR does not parse: ${(err as Error).message}`)
  }
  let ok = false
  try {
    ok = await csr.verify()
  } catch {
    ok = false
  }
  if (!ok) throw new CsrError('CSR signature does not verify with its own public key')
  const key = createPublicKey({
    key: Buffer.from(csr.publicKey.rawData),
    format: 'der',
    type: 'spki',
  })
  const type = key.asymmetricKeyType
  const curve = key.asymmetricKeyDetails?.namedCurve
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
  if (
    !(
      (type === 'ec' && (curve === 'prime256v1' || curve === 'secp384r1')) ||
      (type === 'rsa' && bits >= 2048)
    )
  ) {
    throw new CsrError(`CSR key type ${type}${curve ? `/${curve}` : ''} is not allowed`)
  }
  return key
}
