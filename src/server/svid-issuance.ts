/**
 * SVID issuance for authenticated agents: renewing the agent SVID (RenewAgent), X.509 SVIDs for
 * authorized entries (BatchNewX509SVID) and JWT SVIDs (NewJWTSVID). Authorization is decided by
 * the caller's entry list; this file only refuses what is not in it.
 */
import { isSpiffeEdgeError } from '../errors.js'
import { SpiffeId } from '../spiffe/id.js'
import { mintJwtSvid } from '../spiffe/jwt-svid.js'
import { encryptTo } from '../transport/mqtt/jwe.js'
import type { CallMethods, X509SvidMessage } from '../transport/proto.js'
import type { IssuedX509, SvidRequest } from './ca.js'
import type { AttestedNode, RegistrationEntry } from './datastore/types.js'
import { csrKey, NodeApiError, type NodeApiOptions, Status } from './node-api-common.js'

const MAX_BATCH = 500
/** CSRs verified per step of a batch (see batchNewX509Svid). */
const CHUNK = 16

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
  const ids = new Map<string, SpiffeId>()
  const n = req.params.length
  const results: BatchResult[] = new Array(n)
  const signing: Promise<void>[] = []
  for (let from = 0; from < n; from += CHUNK) {
    // The event loop runs between chunks: a batch of 500 CSRs stalls it for one chunk at a time.
    if (from > 0) await new Promise<void>((r) => setImmediate(r))
    const chunk: { i: number; entry: RegistrationEntry }[] = []
    const reqs: SvidRequest[] = []
    for (let i = from; i < Math.min(n, from + CHUNK); i++) {
      const p = req.params[i]!
      const entry = authorized.get(p.entryId)
      if (!entry) {
        results[i] = {
          status: Status.NOT_FOUND,
          message: `entry ${p.entryId} is not authorized for this agent`,
        }
        continue
      }
      try {
        let spiffeId = ids.get(entry.id)
        if (!spiffeId) {
          spiffeId = SpiffeId.parse(entry.spiffeId)
          ids.set(entry.id, spiffeId)
        }
        reqs.push({
          publicKey: await csrKey(p.csr),
          spiffeId,
          ttlSeconds: entry.x509SvidTtl || o.defaultX509SvidTtlSeconds,
          dnsNames: entry.dnsNames,
        })
        chunk.push({ i, entry })
      } catch (err) {
        results[i] = failed(err)
      }
    }
    if (reqs.length === 0) continue
    // Not awaited here: while the CA key signs this chunk (a token signs on another thread), the
    // next chunk's CSRs are verified. Bounded: at most MAX_BATCH / CHUNK chunks per batch.
    signing.push(
      o.ca.signX509Svids(reqs).then(
        (issued) => {
          for (const [k, { i, entry }] of chunk.entries()) {
            const x = issued[k]!
            results[i] =
              x instanceof Error
                ? failed(x)
                : {
                    status: Status.OK,
                    message: '',
                    svid: svidMessage(x, entry.spiffeId, entry.hint),
                  }
          }
        },
        (err: unknown) => {
          for (const { i } of chunk) results[i] = failed(err)
        },
      ),
    )
  }
  await Promise.all(signing)
  return { results }
}

type BatchResult = CallMethods['BatchNewX509SVID']['response']['results'][number]

/**
 * A refused or failed SVID of a batch: coded refusals keep their status; a key manager failure
 * (a token that went away) is UNAVAILABLE and names its code, so the agent retries later.
 */
function failed(err: unknown): BatchResult {
  if (err instanceof NodeApiError) return { status: err.status, message: err.message }
  const code = isSpiffeEdgeError(err) ? err.code : undefined
  if (code?.startsWith('ERR_PKCS11') || code === 'ERR_KEY_MANAGER')
    return { status: Status.UNAVAILABLE, message: `${code}: ${(err as Error).message}` }
  return { status: Status.INTERNAL, message: (err as Error).message }
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
