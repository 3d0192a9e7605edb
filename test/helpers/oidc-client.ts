/**
 * A relying party written against OpenID Connect Discovery 1.0 and RFC 7517, knowing nothing of
 * SPIFFE or of our code: it is given an issuer URL, fetches `<issuer>/.well-known/openid-configuration`,
 * checks the document's issuer is that URL exactly (§4.3), fetches its jwks_uri, and verifies a
 * token's signature, iss, aud and exp with jose, as Vault's jwt auth or a cloud IAM does.
 */
import { request } from 'node:https'
import { createLocalJWKSet, type JSONWebKeySet, type JWTPayload, jwtVerify } from 'jose'

export interface HttpsResult {
  readonly status: number
  readonly headers: Record<string, string | string[] | undefined>
  readonly text: string
}

export function httpsGet(
  url: string,
  ca: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<HttpsResult> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: opts.method ?? 'GET',
        ca,
        headers: opts.headers ?? {},
        timeout: 10_000,
        // The certificate is checked against the URL's host even when a test sends another Host.
        servername: new URL(url).hostname,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        )
      },
    )
    req.on('timeout', () => req.destroy(new Error(`${url}: timed out`)))
    req.on('error', reject)
    req.end(opts.body)
  })
}

async function getJson(url: string, ca: string): Promise<Record<string, unknown>> {
  const r = await httpsGet(url, ca)
  if (r.status !== 200) throw new Error(`GET ${url}: HTTP ${r.status} ${r.text}`)
  if (!String(r.headers['content-type']).startsWith('application/json')) {
    throw new Error(`GET ${url}: not JSON`)
  }
  return JSON.parse(r.text) as Record<string, unknown>
}

export async function discover(
  issuer: string,
  ca: string,
): Promise<{ doc: Record<string, unknown>; jwks: JSONWebKeySet }> {
  const doc = await getJson(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`, ca)
  if (doc.issuer !== issuer) {
    throw new Error(`discovery issuer ${JSON.stringify(doc.issuer)} is not ${issuer}`)
  }
  const jwksUri = doc.jwks_uri
  if (typeof jwksUri !== 'string' || !jwksUri.startsWith('https://')) {
    throw new Error('jwks_uri must be an https URL')
  }
  const jwks = (await getJson(jwksUri, ca)) as unknown as JSONWebKeySet
  return { doc, jwks }
}

/** Verifies `token` as a relying party of `issuer` that is `audience`; rejects on any failure. */
export async function oidcVerify(
  issuer: string,
  token: string,
  audience: string,
  ca: string,
): Promise<JWTPayload> {
  const { doc, jwks } = await discover(issuer, ca)
  const algs = doc.id_token_signing_alg_values_supported
  const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), {
    issuer,
    audience,
    algorithms: Array.isArray(algs) ? (algs as string[]) : [],
    requiredClaims: ['exp', 'sub', 'iss'],
  })
  return payload
}
