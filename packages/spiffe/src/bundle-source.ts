/**
 * BundleSource (go-spiffe's workloadapi.BundleSource): watches FetchX509Bundles and
 * FetchJWTBundles and holds both kinds of bundle for every trust domain the agent serves. Ready
 * once both streams delivered. For peers that verify but hold no SVID of their own.
 */
import { SourceBase } from './source-base.js'
import {
  type JwtBundle,
  parseJwtBundles,
  parseX509Bundles,
  type TrustDomain,
  type X509Bundle,
} from './svid.js'
import { type BackoffOptions, StreamWatch } from './watcher.js'
import {
  type ClientOptions,
  connectWorkloadApi,
  type RawWorkloadClient,
} from './workload/client.js'
import {
  decode,
  type JwtBundlesResponseMsg,
  type X509BundlesResponseMsg,
} from './workload/proto.js'

export interface BundleSourceOptions extends ClientOptions {
  readonly backoff?: BackoffOptions
}

export interface Bundles {
  readonly x509: ReadonlyMap<string, X509Bundle>
  readonly jwt: ReadonlyMap<string, JwtBundle>
}

/** Anything that can give the JWT bundle of a trust domain (BundleSource, JWTSource). */
export interface JwtBundleSource {
  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined
}

export class BundleSource extends SourceBase<Bundles> implements JwtBundleSource {
  private x509: Map<string, X509Bundle> | undefined
  private jwt: Map<string, JwtBundle> | undefined
  private readonly client: RawWorkloadClient
  private readonly watches: StreamWatch[]

  constructor(opts: BundleSourceOptions = {}) {
    super('BundleSource')
    this.client = connectWorkloadApi(opts)
    const failed = (err: Error, fatal: boolean) => this.watchFailed(err, fatal)
    this.watches = [
      new StreamWatch(
        this.client,
        'FetchX509Bundles',
        (b) => {
          this.x509 = parseX509Bundles(
            decode<X509BundlesResponseMsg>('X509BundlesResponse', b).bundles,
          )
          this.changed()
        },
        failed,
        opts.backoff,
      ),
      new StreamWatch(
        this.client,
        'FetchJWTBundles',
        (b) => {
          this.jwt = parseJwtBundles(decode<JwtBundlesResponseMsg>('JWTBundlesResponse', b).bundles)
          this.changed()
        },
        failed,
        opts.backoff,
      ),
    ]
    for (const w of this.watches) w.start()
  }

  private changed(): void {
    if (this.x509 !== undefined && this.jwt !== undefined) {
      this.applied({ x509: this.x509, jwt: this.jwt }, true)
    }
  }

  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    this.checkOpen()
    return this.x509?.get(td.name)
  }

  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    this.checkOpen()
    return this.jwt?.get(td.name)
  }

  protected stop(): void {
    for (const w of this.watches) w.close()
    this.client.close()
  }
}

export function createBundleSource(opts: BundleSourceOptions = {}): BundleSource {
  return new BundleSource(opts)
}
