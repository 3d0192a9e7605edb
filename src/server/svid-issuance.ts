/**
 * SVID issuance for authenticated agents: renewing the agent SVID (RenewAgent), X.509 SVIDs for
 * authorized entries (BatchNewX509SVID) and JWT SVIDs (NewJWTSVID). Authorization is decided by
 * the caller's entry list; this file only refuses what is not in it.
 */
import { SpiffeId } from '../spiffe/id.js'
import { mintJwtSvid } from '../spiffe/jwt-svid.js'
import { encryptTo } from '../transport/mqtt/jwe.js'
import type { CallMethods, X509SvidMessage } from '../transport/proto.js'
import type { IssuedX509 } from './ca.js'
import type { AttestedNode, RegistrationEntry } from './datastore/types.js'
import { csrKey, NodeApiError, type NodeApiOptions, Status } from './node-api-common.js'

const MAX_BATCH = 500

type IssuanceOptions = Pick<
  NodeApiOptions,
  | 'ca'
  | 'datastore'
  | 'clock'
  | 'agentTtlSeconds'
  | 'defaultX509SvidTtlSeconds'
  | 'defaultJwtSvidTtlSeconds'
  | 'jwtIssuer'
>

export function svidMessage(issued: IssuedX509, spiffeId: string, hint = ''): X509SvidMessage {
  return {
    certChain: issued.chain,
    spiffeId,
    expiresAt: Math.floor(issued.notAfter.getTime() / 1000),
    hint,
  }
}

export async function renewAgent(
  o: IssuanceOptions,
  agent: AttestedNode,
  req: CallMethods['RenewAgent']['request'],
): Promise<CallMethods['RenewAgent']['response']> {
  if (agent.canReattest) {
    throw new NodeApiError(
      Status.PERMISSION_DENIED,
      'must_reattest',
      'this agent renews by attesting again',
      'call AttestAgent with fresh evidence',
    )
  }
  const publicKey = await csrKey(req.csr)
  const issued = await o.ca.signX509Svid({
    publicKey,
    spiffeId: SpiffeId.parse(agent.spiffeId),
    ttlSeconds: o.agentTtlSeconds,
  })
  // The old SVID keeps working until the new one is first used (the agent may crash, or this
  // server restart, in between), so the replaced serial is stored with the node in one write.
  await o.datastore.updateAttestedNode(agent.spiffeId, {
    certSerial: issued.serial,
    previousCertSerial: agent.certSerial,
    certNotAfter: Math.floor(issued.notAfter.getTime() / 1000),
  })
  return { svid: svidMessage(issued, agent.spiffeId) }
}

export async function batchNewX509Svid(
  o: IssuanceOptions,
  authorizedEntries: () => Promise<RegistrationEntry[]>,
  req: CallMethods['BatchNewX509SVID']['request'],
): Promise<CallMethods['BatchNewX509SVID']['response']> {
  if (req.params.length > MAX_BATCH) {
    throw new NodeApiError(
      Status.INVALID_ARGUMENT,
      'too_many',
      `at most ${MAX_BATCH} CSRs per batch`,
      'split the batch',
    )
  }
  const authorized = new Map((await authorizedEntries()).map((e) => [e.id, e]))
  type Result = CallMethods['BatchNewX509SVID']['response']['results'][number]
  const one = async (p: (typeof req.params)[number]): Promise<Result> => {
    const entry = authorized.get(p.entryId)
    if (!entry) {
      return {
        status: Status.NOT_FOUND,
        message: `entry ${p.entryId} is not authorized for this agent`,
      }
    }
    try {
      const publicKey = await csrKey(p.csr)
      const issued = await o.ca.signX509Svid({
        publicKey,
        spiffeId: SpiffeId.parse(entry.spiffeId),
        ttlSeconds: entry.x509SvidTtl || o.defaultX509SvidTtlSeconds,
        dnsNames: entry.dnsNames,
      })
      return {
        status: Status.OK,
        message: '',
        svid: svidMessage(issued, entry.spiffeId, entry.hint),
      }
    } catch (err) {
      return {
        status: err instanceof NodeApiError ? err.status : Status.INTERNAL,
        message: (err as Error).message,
      }
    }
  }
  // Up to 8 at once, results in request order: a CA key in an HSM signs on several sessions.
  const results: Result[] = new Array(req.params.length)
  let next = 0
  const worker = async () => {
    for (let i = next++; i < req.params.length; i = next++) results[i] = await one(req.params[i]!)
  }
  await Promise.all(Array.from({ length: Math.min(8, req.params.length) }, worker))
  return { results }
}

async function encryptResponseToken(responseKey: string, token: string): Promise<string> {
  try {
    return await encryptTo(responseKey, Buffer.from(token, 'utf8'))
  } catch (err) {
    throw new NodeApiError(
      Status.INVALID_ARGUMENT,
      'bad_response_key',
      (err as Error).message,
      'send a public EC P-256 JWK as response_key',
    )
  }
}

export async function newJwtSvid(
  o: IssuanceOptions,
  authorizedEntries: () => Promise<RegistrationEntry[]>,
  req: CallMethods['NewJWTSVID']['request'],
): Promise<CallMethods['NewJWTSVID']['response']> {
  const entry = (await authorizedEntries()).find((e) => e.id === req.entryId)
  if (!entry) {
    throw new NodeApiError(
      Status.NOT_FOUND,
      'not_authorized',
      `entry ${req.entryId} is not authorized for this agent`,
      'sync entries and ask for one of them',
    )
  }
  if (req.audience.length === 0 || req.audience.some((a) => a === '')) {
    throw new NodeApiError(
      Status.INVALID_ARGUMENT,
      'no_audience',
      'at least one non-empty audience is required',
      'pass the audience',
    )
  }
  const { kid, signer } = await o.ca.activeJwt()
  const now = o.clock.now().getTime()
  const issuedAt = new Date(Math.floor(now / 1000) * 1000)
  const expiresAt = new Date(
    issuedAt.getTime() + (entry.jwtSvidTtl || o.defaultJwtSvidTtlSeconds) * 1000,
  )
  const token = await mintJwtSvid({
    spiffeId: SpiffeId.parse(entry.spiffeId),
    audience: req.audience,
    signer,
    kid,
    issuedAt,
    expiresAt,
    ...(o.jwtIssuer === undefined ? {} : { extraClaims: { iss: o.jwtIssuer } }),
  })
  // A response key asks for the token only as a JWE to it: the bytes may cross a broker, and a
  // JWT-SVID is a bearer token. Without one (gRPC over TLS) the token travels as before.
  const encrypted = req.responseKey ? await encryptResponseToken(req.responseKey, token) : ''
  return {
    token: encrypted ? '' : token,
    encryptedToken: encrypted,
    spiffeId: entry.spiffeId,
    expiresAt: Math.floor(expiresAt.getTime() / 1000),
    issuedAt: Math.floor(issuedAt.getTime() / 1000),
    hint: entry.hint,
  }
}
