/**
 * The agent's side of the signed envelope, for any transport: signing a request with the agent
 * SVID key, checking a response against the bundle the agent trusts now, and naming a transport
 * failure by its cause (unreachable, untrusted, refused); and the AttestAgent exchange as
 * messages. A transport only moves the bytes.
 */
import { createHash, createPublicKey, X509Certificate } from 'node:crypto'
import type { AgentNodeAttestor } from '../attestors/types.js'
import type { Signer } from '../keymanager/types.js'
import { TrustBundle } from '../spiffe/bundle.js'
import { createCsr } from '../spiffe/csr.js'
import type { TrustDomain } from '../spiffe/id.js'
import { parseCert, uriSans } from '../spiffe/x509-cert.js'
import { validateX509Svid } from '../spiffe/x509-svid-validate.js'
import {
  checkTimestamp,
  newNonce,
  requestSigningString,
  responseSigningString,
  verifySignature,
} from './envelope.js'
import { type AgentAuth, type AttestResult, NodeCallError } from './node-client.js'
import {
  type CallMethod,
  type CallMethods,
  codec,
  type Init,
  required,
  type SignedResponse,
} from './proto.js'

const UNREACHABLE_REMEDY =
  'start the server, or check server_address/--server-address and the network (the agent retries)'
const UNTRUSTED_REMEDY =
  "the agent's bundle does not trust the server's certificate: if this is the first start, " +
  'set trust_bundle_path to the current bundle (spiffe-edge server bundle show); if the agent ' +
  'was off longer than the CA lifetime, remove its data dir and attest again'

/** The only SPIFFE ID the agent accepts for its server (as SPIRE checks). */
export function serverSpiffeId(td: TrustDomain): string {
  return `spiffe://${td.name}/spire/server`
}

/** A request ready for the wire, and the nonce its response must answer. */
export interface SignedCall {
  readonly bytes: Uint8Array
  readonly nonce: Uint8Array
}

export async function signRequest<M extends CallMethod>(
  method: M,
  body: Init<CallMethods[M]['request']>,
  auth: AgentAuth | undefined,
): Promise<SignedCall> {
  const bodyBytes = codec.request(method).encode(body)
  const nonce = newNonce()
  const timestampMs = Date.now()
  const signature = auth
    ? await auth.signer.sign(
        requestSigningString(method, auth.spiffeId, timestampMs, nonce, bodyBytes),
      )
    : new Uint8Array()
  const bytes = codec.signedRequest.encode({
    method,
    body: bodyBytes,
    agentChain: auth ? [...auth.chain] : [],
    timestampMs,
    nonce,
    signature,
  })
  return { bytes, nonce }
}

/**
 * Verifies a response (signed by the server SVID, chained to `bundle`, for our nonce, fresh) and
 * returns its body; a refusal the server signed becomes ERR_SERVER_REFUSED.
 */
export function openResponse<M extends CallMethod>(
  method: M,
  call: SignedCall,
  responseBytes: Uint8Array,
  bundle: TrustBundle | undefined,
  td: TrustDomain,
): CallMethods[M]['response'] {
  const res = codec.signedResponse.decode(responseBytes)
  verifyResponse(method, call.nonce, res, bundle, td)
  return openVerified(method, res)
}

/** The body of a response verifyResponse accepted; a refusal the server signed is thrown. */
export function openVerified<M extends CallMethod>(
  method: M,
  res: SignedResponse,
): CallMethods[M]['response'] {
  if (res.errorCode !== 0) throw new NodeCallError(res.errorCode, res.errorReason, res.errorMessage)
  return codec.response(method).decode(res.body)
}

/**
 * Verifies a server-signed message: the signer's SVID chains to `bundle` and is the server's, the
 * nonce is ours, the timestamp fresh (unless `checkTime` is false: a retained bundle push is as
 * old as the last change, and its sequence is what makes it new), the signature good. 'insecure'
 * is insecure_bootstrap before any bundle: the chain is not verified, but its leaf must still be
 * the server's ID and must have made the signature (trust on first use, as over gRPC).
 */
export function verifyResponse(
  method: string,
  nonce: Uint8Array,
  res: SignedResponse,
  bundle: TrustBundle | 'insecure' | undefined,
  td: TrustDomain,
  checkTime = true,
): void {
  if (!bundle) throw new NodeCallError(16, 'no_bundle', 'no trust bundle yet: attest first')
  const serverId = serverSpiffeId(td)
  let leafKey: ReturnType<typeof createPublicKey>
  try {
    if (bundle === 'insecure') {
      const leaf = res.serverChain[0]
      if (!leaf) throw new Error('no server certificate')
      const { p } = parseCert(leaf, 'server SVID')
      const ids = uriSans(p)
      if (ids.length !== 1 || ids[0] !== serverId)
        throw new Error(`signed by ${ids.join(',') || 'no URI SAN'}, not the server`)
      leafKey = createPublicKey({
        key: Buffer.from(p.spki),
        format: 'der',
        type: 'spki',
      })
    } else {
      leafKey = verifiedServerKey(res.serverChain, bundle, td, serverId)
    }
  } catch (err) {
    throw untrusted('bad_server_svid', `response not from our server: ${(err as Error).message}`)
  }
  if (Buffer.compare(Buffer.from(res.requestNonce), Buffer.from(nonce)) !== 0) {
    throw new NodeCallError(16, 'nonce', 'response answers another request')
  }
  if (checkTime) checkTimestamp(res.timestampMs, Date.now())
  const data = responseSigningString(method, res.timestampMs, res.requestNonce, res.body, {
    code: res.errorCode,
    message: res.errorMessage,
    reason: res.errorReason,
  })
  if (!verifySignature(leafKey, data, res.signature)) {
    throw new NodeCallError(16, 'signature', 'response signature does not verify')
  }
}

/**
 * Chains this bundle already verified, by their bytes: the server signs every response with the
 * same SVID until it rotates, and a full path validation per response cost more than the rest of
 * the check. An entry is used only while every certificate of the path is still valid, and only
 * for the very bundle object that verified it (a new bundle starts empty).
 */
const verifiedChains = new WeakMap<
  TrustBundle,
  Map<string, { key: ReturnType<typeof createPublicKey>; notBefore: number; notAfter: number }>
>()

function verifiedServerKey(
  chain: readonly Uint8Array[],
  bundle: TrustBundle,
  td: TrustDomain,
  serverId: string,
): ReturnType<typeof createPublicKey> {
  const id = createHash('sha256')
  for (const c of chain) id.update(createHash('sha256').update(c).digest())
  const k = id.digest('hex')
  const now = Date.now()
  let seen = verifiedChains.get(bundle)
  const hit = seen?.get(k)
  if (hit && now >= hit.notBefore && now <= hit.notAfter) return hit.key
  const v = validateX509Svid(
    chain,
    (t) => (t.equals(td) ? bundle.x509Bundle() : undefined),
    new Date(now),
  )
  if (v.spiffeId.toString() !== serverId) throw new Error(`signed by ${v.spiffeId}, not the server`)
  const key = createPublicKey({
    key: Buffer.from(v.leaf.spki),
    format: 'der',
    type: 'spki',
  })
  if (!seen) {
    seen = new Map()
    verifiedChains.set(bundle, seen)
  }
  if (seen.size >= 8) seen.clear()
  const path = v.path.map((c) => new X509Certificate(c))
  seen.set(k, {
    key,
    notBefore: Math.max(...path.map((c) => Date.parse(c.validFrom))),
    notAfter: Math.min(...path.map((c) => Date.parse(c.validTo))),
  })
  return key
}

function untrusted(reason: string, message: string, status = 16): NodeCallError {
  return new NodeCallError(status, reason, message, 'ERR_SERVER_UNTRUSTED', UNTRUSTED_REMEDY)
}

/** What OpenSSL and our identity check say when the presented certificate is not trusted. */
const TLS_FAILURE =
  /certificate|self[- ]signed|issuer|verify|server presented|CERT_|DEPTH_ZERO|SELF_SIGNED/i

/**
 * A transport failure as the agent should report it. `details` ending in "(reason)" is a refusal
 * the server sent; otherwise, when `noConnection`, the server was unreachable, or untrusted when
 * the secure channel failed its certificate check.
 */
export function transportError(
  status: number,
  details: string,
  address: string,
  noConnection: boolean,
): NodeCallError {
  const m = /\(([a-z_]+)\)$/.exec(details)
  if (m) return new NodeCallError(status, m[1]!, details)
  if (noConnection) {
    if (TLS_FAILURE.test(details)) {
      return untrusted(
        'untrusted_server',
        `cannot verify the server at ${address}: ${details}`,
        status,
      )
    }
    return new NodeCallError(
      status,
      'unreachable',
      `cannot reach the server at ${address}: ${details}`,
      'ERR_SERVER_UNREACHABLE',
      UNREACHABLE_REMEDY,
    )
  }
  return new NodeCallError(status, 'transport', details)
}

// ------------------------------------------------------------ AttestAgent, as a message exchange

/** The first AttestAgent message: the attestor's evidence and a CSR for the new agent key. */
export async function attestParams(attestor: AgentNodeAttestor, signer: Signer): Promise<Buffer> {
  const [payload, csr] = await Promise.all([attestor.payload(), createCsr(signer)])
  const bytes = Buffer.from(
    codec.attestRequest.encode({ params: { data: { type: attestor.name, payload }, csr } }),
  )
  // After the CSR's signature (which may need the same TPM): the caller writes these bytes next.
  attestor.payloadSent?.()
  return bytes
}

/**
 * One server message of the exchange: a challenge gets the attestor's answer to send back; the
 * result gives the SVID and the bundle it came with (which the client should trust from now on).
 */
export async function attestStep(
  message: Uint8Array,
  attestor: AgentNodeAttestor,
  td: TrustDomain,
): Promise<{ reply: Buffer } | { result: AttestResult } | undefined> {
  const m = codec.attestResponse.decode(message)
  if (m.challenge) {
    const response = await attestor.respond(m.challenge)
    return { reply: Buffer.from(codec.attestRequest.encode({ challengeResponse: response })) }
  }
  if (m.result) {
    return {
      result: {
        svid: required(m.result.svid, 'AttestAgentResponse.result.svid'),
        bundle: TrustBundle.fromSpiffeJson(td, m.result.bundle),
        reattestable: m.result.reattestable,
        selectors: m.result.selectors,
      },
    }
  }
  return undefined
}
