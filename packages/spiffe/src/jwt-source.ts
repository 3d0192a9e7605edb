/**
 * JWTSource (go-spiffe's workloadapi.JWTSource): watches FetchJWTBundles for validation and
 * fetches JWT-SVIDs for audiences on demand (the agent caches and rotates them, so no local
 * cache is kept here). Validation is local against the watched bundles, or by the agent.
 */
import { WorkloadProtocolError } from '../../../src/agent/workload-api/errors.js'
import type { JwtBundleSource } from './bundle-source.js'
import { NoSvidError } from './errors.js'
import { type ValidatedJwt, validateJwtSvid } from './jwt.js'
import { SourceBase } from './source-base.js'
import {
  fromClaims,
  type JwtBundle,
  type JwtSvid,
  parseJwtBundles,
  parseJwtSvid,
  type SpiffeId,
  type TrustDomain,
} from './svid.js'
import { type BackoffOptions, StreamWatch } from './watcher.js'
import {
  type ClientOptions,
  connectWorkloadApi,
  type RawWorkloadClient,
} from './workload/client.js'
import { decode, type JwtBundlesResponseMsg } from './workload/proto.js'

export interface JWTSourceOptions extends ClientOptions {
  readonly backoff?: BackoffOptions
}

export interface FetchJwtSvidParams {
  /** At least one audience (the spec recommends exactly one). */
  readonly audience: string | readonly string[]
  /** Which of the workload's identities; default: the agent's default (first) one. */
  readonly subject?: SpiffeId | string
  /** Or pick by entry hint. */
  readonly hint?: string
}

/** At most this many audiences per request (the agent refuses more: 32 × 1 KiB). */
export const MAX_AUDIENCES = 32

export class JWTSource
  extends SourceBase<ReadonlyMap<string, JwtBundle>>
  implements JwtBundleSource
{
  private bundles: Map<string, JwtBundle> | undefined
  private readonly client: RawWorkloadClient
  private readonly watch: StreamWatch

  constructor(opts: JWTSourceOptions = {}) {
    super('JWTSource')
    this.client = connectWorkloadApi(opts)
    this.watch = new StreamWatch(
      this.client,
      'FetchJWTBundles',
      (b) => {
        this.bundles = parseJwtBundles(
          decode<JwtBundlesResponseMsg>('JWTBundlesResponse', b).bundles,
        )
        this.applied(this.bundles, true)
      },
      (err, fatal) => this.watchFailed(err, fatal),
      opts.backoff,
    )
    this.watch.start()
  }

  /** A JWT-SVID for the audience(s), from the agent. */
  async fetchJwtSvid(p: FetchJwtSvidParams): Promise<JwtSvid> {
    const all = await this.fetchJwtSvids(p)
    const svid = p.hint === undefined ? all[0] : all.find((s) => s.hint === p.hint)
    if (svid === undefined) throw new NoSvidError(`no JWT-SVID with hint ${JSON.stringify(p.hint)}`)
    return svid
  }

  /** One JWT-SVID per identity of the workload (or the one `subject` names). */
  async fetchJwtSvids(p: FetchJwtSvidParams): Promise<JwtSvid[]> {
    this.checkOpen()
    const audience = typeof p.audience === 'string' ? [p.audience] : [...p.audience]
    if (
      audience.length === 0 ||
      audience.length > MAX_AUDIENCES ||
      audience.some((a) => a === '')
    ) {
      throw new WorkloadProtocolError(`give 1 to ${MAX_AUDIENCES} non-empty audiences`)
    }
    const subject = p.subject === undefined ? undefined : String(p.subject)
    const msgs = await this.client.fetchJwtSvids(audience, subject)
    if (msgs.length === 0) throw new NoSvidError('the agent returned no JWT-SVID')
    return msgs.map(parseJwtSvid)
  }

  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    this.checkOpen()
    return this.bundles?.get(td.name)
  }

  /** Validates locally against the watched bundles (no round trip). */
  validateJwtSvid(token: string, audience: string): Promise<ValidatedJwt> {
    this.checkOpen()
    return validateJwtSvid(token, audience, this)
  }

  /** Asks the agent to validate (ValidateJWTSVID); the agent's bundles decide. */
  async validateWithWorkloadApi(token: string, audience: string): Promise<ValidatedJwt> {
    this.checkOpen()
    const r = await this.client.validateJwtSvid(token, audience)
    const parsed = fromClaims(r.claims, r.spiffeId)
    return { id: parsed.id, claims: parsed.claims, expiresAt: parsed.expiresAt }
  }

  protected stop(): void {
    this.watch.close()
    this.client.close()
  }
}

export function createJWTSource(opts: JWTSourceOptions = {}): JWTSource {
  return new JWTSource(opts)
}
