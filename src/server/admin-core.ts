/**
 * What the admin API may do on the server (AdminCore): bundle, entries' checks, join tokens,
 * SPIRE's x509/jwt mint, the logger. Kept apart from server.ts, which only wires it.
 */
import { randomBytes } from 'node:crypto'
import { hashJoinToken } from '../attestors/join-token/server.js'
import type { Log, Logger } from '../common/log.js'
import { publicKeyFromCsr } from '../spiffe/csr.js'
import { SpiffeId, type TrustDomain } from '../spiffe/id.js'
import { mintJwtSvid } from '../spiffe/jwt-svid.js'
import type { BrokerAccess } from '../transport/mqtt/broker-access.js'
import type { AdminCore } from './admin.js'
import type { CaManager, Clock } from './ca.js'
import type { ServerConfig } from './config.js'
import type { Datastore } from './datastore/types.js'
import { badEntry, checkEntry, checkIssuableId } from './entry-check.js'
import type { ForeignBundleAdmin } from './federation/index.js'

export interface AdminCoreDeps {
  readonly trustDomain: TrustDomain
  readonly serverId: string
  readonly datastore: Datastore
  readonly ca: CaManager
  readonly clock: Clock
  readonly config: ServerConfig
  readonly log: Log
  readonly logger: Logger | undefined
  /** The MQTT broker's authorization (dynsec): a removed agent loses its broker client too. */
  readonly brokerAccess?: BrokerAccess | undefined
  /** Foreign bundles and federation relationships (`server bundle …`, `server federation …`). */
  readonly federatedBundles?: ForeignBundleAdmin | undefined
}

export function adminCore(d: AdminCoreDeps): AdminCore {
  const { trustDomain, datastore, ca, clock, config, log, logger } = d
  const serverIdString = d.serverId
  /** An ID the admin may issue for: in the trust domain, not the server's or an agent's. */
  const issuable = (spiffeId: string): SpiffeId => {
    const id = SpiffeId.parse(spiffeId)
    if (!id.memberOf(trustDomain))
      throw badEntry(`${spiffeId} is not in trust domain ${trustDomain.name}`)
    checkIssuableId(id, trustDomain, serverIdString)
    return id
  }
  return {
    ...(d.federatedBundles ? { federatedBundles: d.federatedBundles } : {}),
    async agentRemoved(id) {
      await d.brokerAccess?.revokeAgent(id)
    },
    trustDomain: trustDomain.name,
    datastore,
    async bundle() {
      const b = ca.bundle()
      return { spiffe: b.toSpiffeJson(), pem: b.toPem(), sequence: b.sequence }
    },
    checkEntry: (input) => checkEntry(input, trustDomain, serverIdString),
    ...(logger ? { logger, launchLogLevel: config.log.level } : {}),
    async mintX509(req) {
      const id = issuable(req.spiffeId)
      const issued = await ca.signX509Svid({
        publicKey: await publicKeyFromCsr(req.csr),
        spiffeId: id,
        ttlSeconds: req.ttlSeconds || config.defaultX509SvidTtlSeconds,
        dnsNames: req.dnsNames,
      })
      return {
        chain: issued.chain,
        expiresAt: Math.floor(issued.notAfter.getTime() / 1000),
        bundle: ca.bundle().toPem(),
      }
    },
    async mintJwt(req) {
      const id = issuable(req.spiffeId)
      const { kid, signer } = await ca.activeJwt()
      const issuedAt = new Date(Math.floor(clock.now().getTime() / 1000) * 1000)
      const expiresAt = new Date(
        issuedAt.getTime() + (req.ttlSeconds || config.defaultJwtSvidTtlSeconds) * 1000,
      )
      const token = await mintJwtSvid({
        spiffeId: id,
        audience: req.audience,
        signer,
        kid,
        issuedAt,
        expiresAt,
        ...(config.jwtIssuer === undefined ? {} : { extraClaims: { iss: config.jwtIssuer } }),
      })
      return { token, expiresAt: Math.floor(expiresAt.getTime() / 1000) }
    },
    async generateJoinToken(spiffeId, ttlSeconds) {
      // Hex, not base64url: a token starting with '-' would be read as a flag on a command line.
      const token = randomBytes(32).toString('hex')
      const expiresAt = Math.floor(clock.now().getTime() / 1000) + ttlSeconds
      if (spiffeId !== undefined) issuable(spiffeId)
      // The alias ID waits with the token's hash; its entry is created when the token is
      // used (aliasingJoinTokenAttestor), so nothing at rest holds a usable token.
      await datastore.createJoinToken({
        tokenHash: hashJoinToken(token),
        expiresAt,
        ...(spiffeId ? { spiffeId } : {}),
      })
      log('info', 'join token generated', {
        expires_at: expiresAt,
        ...(spiffeId ? { spiffe_id: spiffeId } : {}),
      })
      return { token, expiresAt }
    },
  }
}
