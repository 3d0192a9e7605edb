/**
 * Local instance-metadata services that answer as the real ones do on the wire, for the cloud
 * node attestors' tests and demo:
 *  - AWS IMDSv2 (tokens required): PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds
 *    (1-21600, else 400; echoed back); every GET needs X-aws-ec2-metadata-token (else 401);
 *    X-Forwarded-For on the PUT → 403; /latest/dynamic/instance-identity/{document,pkcs7,rsa2048,
 *    signature}. The PKCS#7 forms are made by `openssl smime` (RSA, SHA-256: real AWS /pkcs7 is
 *    DSA/SHA-1; the unit tests check that form on AWS's own sample).
 *  - GCP: Metadata-Flavor: Google required (else 403), answered with it; identity tokens at
 *    /computeMetadata/v1/instance/service-accounts/<sa>/identity?audience=…[&format=full].
 *  - Azure IMDS: Metadata: true required (else 400 invalid_request); managed identity tokens at
 *    /metadata/identity/oauth2/token?api-version=…&resource=….
 */
import { execFileSync } from 'node:child_process'
import { createPublicKey, randomBytes, sign } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { SignJWT } from 'jose'
import { findBinary } from '../process.js'
import { awsApiHandler } from './aws-api.js'
import { ARM_RESOURCE, azureApiHandler, imdsIdentity } from './azure-api.js'
import { gcpApiHandler } from './gcp-api.js'
import type { CloudKeys, CloudKind } from './keys.js'

/** What the simulated instance is; every field has a default. */
export interface CloudIdentity {
  // AWS
  readonly accountId?: string
  readonly region?: string
  readonly availabilityZone?: string
  readonly instanceId?: string
  readonly imageId?: string
  readonly pendingTime?: string
  /** EC2 API (POST / on the same port): the instance's tags, security groups, instance profile. */
  readonly tags?: Readonly<Record<string, string>>
  readonly securityGroups?: readonly { readonly id: string; readonly name: string }[]
  /** null: no instance profile attached. */
  readonly instanceProfile?: { readonly arn: string; readonly roles: readonly string[] } | null
  /** The access key the EC2/IAM/STS API accepts, and the role ARNs it may assume. */
  readonly awsApi?: {
    readonly accessKeyId: string
    readonly secretAccessKey: string
    readonly assumableRoles: readonly string[]
  }
  readonly rootVolumeAttachDelay?: number
  // GCP
  readonly gcpInstanceId?: string
  readonly projectId?: string
  readonly projectNumber?: string
  readonly zone?: string
  readonly instanceName?: string
  readonly serviceAccount?: string
  /** Compute API (instances.get on the same port): network tags, labels, metadata items. */
  readonly networkTags?: readonly string[]
  readonly labels?: Readonly<Record<string, string>>
  readonly metadata?: Readonly<Record<string, string>>
  /** The service account the server's key file names (the API refuses assertions from others). */
  readonly apiServiceAccount?: string
  /** An authorized_user (gcloud application-default login) the token endpoint accepts. */
  readonly gcpUser?: {
    readonly clientId: string
    readonly clientSecret: string
    readonly refreshToken: string
  }
  // Azure
  readonly tenantId?: string
  readonly principalId?: string
  readonly subscriptionId?: string
  readonly resourceGroup?: string
  readonly vmName?: string
  /** Resource Manager (on the same port): the VM's NIC security group, virtual network, subnet. */
  readonly networkResourceGroup?: string
  readonly networkSecurityGroup?: string
  readonly virtualNetwork?: string
  readonly subnet?: string
  /** The app registration (client credentials) AAD accepts for Resource Manager. */
  readonly azureApi?: { readonly clientId: string; readonly clientSecret: string }
  /**
   * A user-assigned managed identity on the VM. IMDS answers with its token when asked by
   * client_id, object_id or msi_res_id, or when the VM has no system-assigned identity.
   */
  readonly userAssigned?: {
    readonly resourceGroup: string
    readonly name: string
    readonly principalId: string
    readonly clientId: string
  }
  /** false: the VM has no system-assigned identity (default true). */
  readonly systemAssigned?: boolean
  /** More VMs in the subscription's resource list; `shared` of them also carry userAssigned. */
  readonly otherVms?: { readonly count: number; readonly shared?: number }
  /** Test faults of the Resource Manager VM answer. */
  readonly armFault?: 'oversize' | 'slow'
  /** GCP/Azure token lifetime, seconds (negative: already expired, for refusal tests). */
  readonly lifetimeSeconds?: number
}

export const DEFAULT_IDENTITY = {
  accountId: '123456789012',
  region: 'us-west-2',
  availabilityZone: 'us-west-2b',
  instanceId: 'i-0b22a22eec53b9321',
  imageId: 'ami-5fb8c835',
  tags: { Name: 'gateway-1', fleet: 'edge' } as Readonly<Record<string, string>>,
  securityGroups: [{ id: 'sg-0a1b2c3d4e5f60718', name: 'edge-gateways' }] as readonly {
    readonly id: string
    readonly name: string
  }[],
  instanceProfile: {
    arn: 'arn:aws:iam::123456789012:instance-profile/edge-gateway',
    roles: ['arn:aws:iam::123456789012:role/edge-gateway'],
  } as { readonly arn: string; readonly roles: readonly string[] } | null,
  awsApi: {
    accessKeyId: 'AKIASIMULATEDEDGE001',
    secretAccessKey: 'c2ltdWxhdGVkLXNlY3JldC1mb3ItdGhlLWVjMi1hcGk',
    assumableRoles: ['arn:aws:iam::123456789012:role/spiffe-edge-attestor'] as readonly string[],
  },
  rootVolumeAttachDelay: 2,
  gcpInstanceId: '4710471047104710471',
  projectId: 'edge-fleet-sim',
  projectNumber: '471104711047',
  zone: 'europe-west1-b',
  instanceName: 'gateway-1',
  serviceAccount: '471104711047-compute@developer.gserviceaccount.com',
  networkTags: ['edge-gateway', 'http-server'] as readonly string[],
  labels: { fleet: 'edge', env: 'prod' } as Readonly<Record<string, string>>,
  metadata: { role: 'gateway', 'startup-script': '#!/bin/sh\necho hi' } as Readonly<
    Record<string, string>
  >,
  apiServiceAccount: 'spiffe-edge-attestor@edge-fleet-sim.iam.gserviceaccount.com',
  tenantId: '72f988bf-86f1-41af-91ab-2d7cd011db47',
  principalId: '5b2e6c1e-3f4a-4f9b-9c1d-0e2f3a4b5c6d',
  subscriptionId: 'd5b40d61-272e-48da-beb9-05f295c42bd6',
  resourceGroup: 'frontend',
  vmName: 'blog',
  networkResourceGroup: 'network',
  networkSecurityGroup: 'frontend-nsg',
  virtualNetwork: 'edge-vnet',
  subnet: 'gateways',
  azureApi: {
    clientId: '0b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d',
    clientSecret: 'sim~c2ltdWxhdGVkLWF6dXJlLWNsaWVudC1zZWNyZXQ',
  },
  gcpUser: {
    clientId: '764086051850-sim.apps.googleusercontent.com',
    clientSecret: 'd-FL95Q19q7MQmFpd7hHD0Ty',
    refreshToken: '1//sim-refresh-token-for-the-compute-api',
  },
} as const

type Id = typeof DEFAULT_IDENTITY & CloudIdentity

const MAX_TTL = 21600

function send(
  res: ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
) {
  res.writeHead(status, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    ...headers,
  })
  res.end(body)
}

const wrap64 = (b64: string) => b64.replace(/(.{64})/g, '$1\n').trim()

/** AWS serves the document pretty-printed; the signature covers exactly these bytes. */
export function awsDocument(id: Id, startedAt: Date): string {
  const doc = {
    accountId: id.accountId,
    architecture: 'x86_64',
    availabilityZone: id.availabilityZone,
    billingProducts: null,
    devpayProductCodes: null,
    marketplaceProductCodes: null,
    imageId: id.imageId,
    instanceId: id.instanceId,
    instanceType: 't3.micro',
    kernelId: null,
    pendingTime: id.pendingTime ?? `${startedAt.toISOString().slice(0, 19)}Z`,
    privateIp: '10.0.0.12',
    ramdiskId: null,
    region: id.region,
    version: '2017-09-30',
  }
  return JSON.stringify(doc, null, 2).replace(/": /g, '" : ')
}

export function awsSignatures(keys: CloudKeys, document: string): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-aws-sim-'))
  try {
    const docFile = join(dir, 'document')
    writeFileSync(docFile, document)
    const pkcs7 = execFileSync(findBinary('openssl', 'openssl'), [
      'smime',
      '-sign',
      '-binary',
      '-nodetach',
      '-nocerts',
      '-md',
      'sha256',
      '-outform',
      'DER',
      '-signer',
      keys.trustFile,
      '-inkey',
      keys.keyFile,
      '-in',
      docFile,
    ])
    const b64 = wrap64(pkcs7.toString('base64'))
    return {
      pkcs7: b64,
      rsa2048: b64,
      signature: wrap64(sign('sha256', Buffer.from(document), keys.privateKey).toString('base64')),
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

function awsHandler(id: Id, keys: CloudKeys) {
  const startedAt = new Date()
  const document = awsDocument(id, startedAt)
  const sigs = awsSignatures(keys, document)
  const tokens = new Map<string, number>()
  const { instanceProfile, ...rest } = id
  const api = awsApiHandler({ ...rest, ...(instanceProfile ? { instanceProfile } : {}) }, startedAt)
  return (req: IncomingMessage, res: ServerResponse, url: URL) => {
    const now = Date.now()
    // The EC2/IAM/STS Query API (SigV4-signed POSTs to /); IMDS never answers a POST there.
    if (req.method === 'POST' && url.pathname === '/') return api(req, res, url)
    if (url.pathname === '/latest/api/token') {
      if (req.method !== 'PUT') return send(res, 405, '')
      if (req.headers['x-forwarded-for'] !== undefined) return send(res, 403, '')
      const ttlText = String(req.headers['x-aws-ec2-metadata-token-ttl-seconds'] ?? '')
      const ttl = Number(ttlText)
      if (!/^\d+$/.test(ttlText) || ttl < 1 || ttl > MAX_TTL) return send(res, 400, '')
      if (tokens.size > 10_000) for (const [t, exp] of tokens) if (exp < now) tokens.delete(t)
      const token = randomBytes(33).toString('base64')
      tokens.set(token, now + ttl * 1000)
      return send(res, 200, token, { 'X-aws-ec2-metadata-token-ttl-seconds': String(ttl) })
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, '')
    const token = String(req.headers['x-aws-ec2-metadata-token'] ?? '')
    const exp = tokens.get(token)
    if (exp === undefined || exp < now) return send(res, 401, '')
    const base = '/latest/dynamic/instance-identity/'
    if (url.pathname === `${base}document`)
      return send(res, 200, document, { 'Content-Type': 'application/json' })
    if (url.pathname.startsWith(base)) {
      const s = sigs[url.pathname.slice(base.length)]
      if (s) return send(res, 200, s)
    }
    if (url.pathname === '/latest/meta-data/instance-id') return send(res, 200, id.instanceId)
    return send(res, 404, '')
  }
}

function gcpHandler(id: Id, keys: CloudKeys) {
  const flavor = { 'Metadata-Flavor': 'Google', Server: 'Metadata Server for VM' }
  const sa = keys.serviceAccount!
  const api = gcpApiHandler(id, createPublicKey(sa.privateKey), sa.keyId, new Date())
  return async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    // The OAuth2 token endpoint and the Compute API, beside the metadata server on one port.
    const answered = api.handle(req, res, url)
    if (answered !== false) return answered
    if (
      req.headers['x-forwarded-for'] !== undefined ||
      req.headers['metadata-flavor'] !== 'Google'
    ) {
      return send(res, 403, 'Missing required header: "Metadata-Flavor": "Google"\n', flavor)
    }
    if (req.method !== 'GET') return send(res, 405, '', flavor)
    const m = /^\/computeMetadata\/v1\/instance\/service-accounts\/([^/]+)\/(identity|token)$/.exec(
      url.pathname,
    )
    if (!m) return send(res, 404, 'Not Found\n', flavor)
    const sa = decodeURIComponent(m[1]!)
    if (sa !== 'default' && sa !== id.serviceAccount) return send(res, 404, 'Not Found\n', flavor)
    // The account's access token, for a server that runs on this instance (ADC's last resort).
    if (m[2] === 'token')
      return send(res, 200, JSON.stringify(api.issue()), {
        ...flavor,
        'Content-Type': 'application/json',
      })
    const audience = url.searchParams.get('audience') ?? ''
    if (audience === '') return send(res, 400, 'non-empty audience parameter required\n', flavor)
    const iat = Math.floor(Date.now() / 1000)
    const claims: Record<string, unknown> = {
      azp: '104710471047104710471',
      email: id.serviceAccount,
      email_verified: true,
      sub: '104710471047104710471',
    }
    if (url.searchParams.get('format') === 'full') {
      claims.google = {
        compute_engine: {
          instance_creation_timestamp: iat - 600,
          instance_id: id.gcpInstanceId,
          instance_name: id.instanceName,
          project_id: id.projectId,
          project_number: Number(id.projectNumber),
          zone: id.zone,
        },
      }
    }
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: keys.kid, typ: 'JWT' })
      .setIssuer('https://accounts.google.com')
      .setAudience(audience)
      .setIssuedAt(iat)
      .setExpirationTime(iat + (id.lifetimeSeconds ?? 3600))
      .sign(keys.privateKey)
    return send(res, 200, token, { ...flavor, 'Content-Type': 'text/html; charset=UTF-8' })
  }
}

function azureHandler(id: Id, keys: CloudKeys) {
  const api = azureApiHandler(id)
  const json = (res: ServerResponse, status: number, o: unknown) =>
    send(res, status, JSON.stringify(o), { 'Content-Type': 'application/json; charset=utf-8' })
  const bad = (res: ServerResponse, description: string) =>
    json(res, 400, { error: 'invalid_request', error_description: description })
  return async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    // AAD's token endpoint and Resource Manager, beside IMDS on one port.
    const answered = api.handle(req, res, url)
    if (answered !== false) return answered
    if (req.headers['x-forwarded-for'] !== undefined)
      return bad(res, 'Request contains X-Forwarded-For header')
    if (req.headers.metadata !== 'true') return bad(res, 'Required metadata header not specified')
    if (url.pathname !== '/metadata/identity/oauth2/token')
      return json(res, 404, { error: 'Not found' })
    if (req.method !== 'GET') return json(res, 405, { error: 'Method not allowed' })
    if (!url.searchParams.get('api-version'))
      return bad(res, 'Required query variable api-version is missing')
    const resource = url.searchParams.get('resource') ?? ''
    if (resource === '') return bad(res, 'Required audience parameter not specified')
    const who = imdsIdentity(id, url.searchParams)
    if (typeof who === 'string') return bad(res, who)
    const iat = Math.floor(Date.now() / 1000)
    const lifetime = id.lifetimeSeconds ?? 86400
    const issuer = `https://sts.windows.net/${id.tenantId}/`
    const token = await new SignJWT({
      appid: who.clientId,
      appidacr: '2',
      idp: issuer,
      oid: who.principalId,
      tid: id.tenantId,
      uti: randomBytes(16).toString('base64url'),
      ver: '1.0',
      xms_mirid: who.mirid,
    })
      .setProtectedHeader({ alg: 'RS256', kid: keys.kid, x5t: keys.kid, typ: 'JWT' })
      .setIssuer(issuer)
      .setAudience(resource)
      .setSubject(who.principalId)
      .setIssuedAt(iat)
      .setNotBefore(iat)
      .setExpirationTime(iat + lifetime)
      .sign(keys.privateKey)
    // A managed identity token for Resource Manager is what the server's use_msi asks for.
    if (resource === ARM_RESOURCE) api.register(token, (iat + lifetime) * 1000)
    return json(res, 200, {
      access_token: token,
      client_id: who.clientId,
      expires_in: String(lifetime),
      expires_on: String(iat + lifetime),
      ext_expires_in: String(lifetime),
      not_before: String(iat),
      resource,
      token_type: 'Bearer',
    })
  }
}

/** The HTTP server for one simulated cloud on 127.0.0.1:port (0: any free port). */
export async function serveCloudMetadata(
  kind: CloudKind,
  keys: CloudKeys,
  identity: CloudIdentity,
  port: number,
): Promise<{ server: Server; port: number }> {
  const id = { ...DEFAULT_IDENTITY, ...identity } as Id
  const handle =
    kind === 'aws'
      ? awsHandler(id, keys)
      : kind === 'gcp'
        ? gcpHandler(id, keys)
        : azureHandler(id, keys)
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://metadata')
    Promise.resolve(handle(req, res, url)).catch((err: Error) => send(res, 500, err.message))
  })
  // Metadata services answer small requests; a slow or huge one is cut off.
  server.headersTimeout = 5000
  server.requestTimeout = 10000
  server.maxHeadersCount = 50
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve())
  })
  return { server, port: (server.address() as { port: number }).port }
}
