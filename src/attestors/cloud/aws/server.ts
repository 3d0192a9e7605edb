/**
 * The aws_iid server half: verifies the instance identity document's signature against AWS's
 * certificate for the document's region (shipped, or configured), the account allowlist, the
 * document's age when configured, and SPIRE's trust-on-first-use rule (the document never
 * changes, so whoever has a copy could attest: an instance attests once, again only after an
 * eviction). ID: spiffe://<td>/spire/agent/aws_iid/<account>/<region>/<instance id>.
 */
import { verify, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import type { Table } from '../../../common/config.js'
import type { Selector, ServerNodeAttestor } from '../../types.js'
import {
  type AttestedLookup,
  CloudAttestationError,
  checkFirstUse,
  PluginConfig,
} from '../common.js'
import { AWS_PKCS7_CERTIFICATES } from './certs.js'
import type { AwsApi, AwsApiConfig } from './ec2.js'
import { Pkcs7Error, verifyPkcs7 } from './pkcs7.js'
import { AWS_IID, parseAwsPayload } from './protocol.js'

export interface AwsServerConfig {
  readonly accounts: ReadonlySet<string>
  /** Region ('*' = any other) → the certificates that may sign its documents. */
  readonly certificates: ReadonlyMap<string, readonly X509Certificate[]>
  /** Seconds; 0 = no limit. */
  readonly maxDocumentAge: number
  readonly tofu: boolean
  /** EC2/IAM lookups for the tag:, sg: and iamrole: selectors; absent without credentials. */
  readonly api?: AwsApiConfig
}

const SOURCE = `plugins.NodeAttestor.${AWS_IID}`
const DEFAULT_API_TIMEOUT_MS = 10_000

export function describeAwsApi(cfg: AwsApiConfig): string {
  const parts = [`credentials from ${cfg.source}`]
  if (cfg.assumeRole) parts.push(`assuming role ${cfg.assumeRole} in each instance's account`)
  if (cfg.ec2Endpoint) parts.push(`EC2 at ${cfg.ec2Endpoint}`)
  return parts.join(', ')
}

/**
 * The AWS SDK takes ~2 s to load on a busy 2-core machine: it is loaded only by servers that
 * configured lookups, in the background from start, and awaited by the first attestation.
 */
function loadApi(cfg: AwsApiConfig): () => Promise<AwsApi> {
  const p = import('./ec2.js').then((m) => new m.AwsApi(cfg))
  p.catch(() => undefined)
  return async () => {
    try {
      return await p
    } catch (err) {
      throw new CloudAttestationError(AWS_IID, 'api', 'the AWS SDK did not load', err)
    }
  }
}
const REGION = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/

function pemCertificates(text: string): X509Certificate[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []
  return blocks.map((b) => new X509Certificate(b))
}

export function parseAwsServerConfig(
  raw: Table,
  baseDir: string,
  env: NodeJS.ProcessEnv = process.env,
): AwsServerConfig {
  const c = new PluginConfig(SOURCE, raw, [
    'account_ids',
    'certificates',
    'max_document_age',
    'tofu',
    'access_key_id',
    'secret_access_key',
    'assume_role',
    'partition',
    'skip_block_device',
    'disable_instance_profile_selectors',
    'ec2_endpoint',
    'iam_endpoint',
    'sts_endpoint',
    'api_timeout_ms',
  ])
  const accounts = new Set(c.strings('account_ids', /^\d{12}$/, true))
  const certificates = new Map<string, X509Certificate[]>()
  const table = c.table('certificates')
  const source: Record<string, string> = {}
  if (table) {
    for (const [region, path] of Object.entries(table)) {
      if (region !== '*' && !REGION.test(region))
        c.problems.push(`certificates.${region}: not an AWS region or '*'`)
      else if (typeof path !== 'string' || path === '')
        c.problems.push(`certificates.${region}: must be a PEM file path`)
      else {
        try {
          source[region] = readFileSync(resolve(baseDir, path), 'utf8')
        } catch (err) {
          c.problems.push(`certificates.${region}: ${(err as Error).message}`)
        }
      }
    }
  }
  for (const [region, pem] of Object.entries(table ? source : AWS_PKCS7_CERTIFICATES)) {
    try {
      const certs = pemCertificates(pem)
      if (certs.length === 0) c.problems.push(`certificates.${region}: no certificate in the file`)
      else certificates.set(region, certs)
    } catch (err) {
      c.problems.push(`certificates.${region}: ${(err as Error).message}`)
    }
  }
  const maxDocumentAge = c.int('max_document_age', 0, 10 * 365 * 86400)
  const tofu = c.bool('tofu', true)
  const api = parseApi(c, env)
  c.done()
  return { accounts, certificates, maxDocumentAge, tofu, ...(api ? { api } : {}) }
}

/** SPIRE's rule: the keys in the config, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. */
function parseApi(c: PluginConfig, env: NodeJS.ProcessEnv): AwsApiConfig | undefined {
  const keyId = c.string('access_key_id')
  const secret = c.string('secret_access_key')
  if ((keyId === undefined) !== (secret === undefined))
    c.problems.push('access_key_id and secret_access_key: set both or neither')
  const assumeRole = c.string('assume_role')
  if (assumeRole !== undefined && !/^[\w+=,.@-]{1,64}$/.test(assumeRole))
    c.problems.push(
      "assume_role: a role name (not an ARN): it is assumed in the instance's account",
    )
  const partition = c.string('partition') ?? 'aws'
  if (!/^aws(-[a-z]+)*$/.test(partition))
    c.problems.push(`partition: ${partition} is not an AWS partition`)
  const endpoints = {
    ec2Endpoint: c.url('ec2_endpoint'),
    iamEndpoint: c.url('iam_endpoint'),
    stsEndpoint: c.url('sts_endpoint'),
  }
  const timeoutMs = c.int('api_timeout_ms', DEFAULT_API_TIMEOUT_MS, 120_000)
  const skipBlockDevice = c.bool('skip_block_device', false)
  const disableInstanceProfileSelectors = c.bool('disable_instance_profile_selectors', false)
  let credentials: AwsApiConfig['credentials'] | undefined
  let source: AwsApiConfig['source'] = 'config'
  if (keyId !== undefined && secret !== undefined)
    credentials = { accessKeyId: keyId, secretAccessKey: secret }
  else if (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY) {
    source = 'environment'
    credentials = {
      accessKeyId: env.AWS_ACCESS_KEY_ID,
      secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
      ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
    }
  }
  if (!credentials) {
    if (assumeRole !== undefined)
      c.problems.push('assume_role: needs credentials to assume it with')
    return undefined
  }
  return {
    credentials,
    source,
    ...(assumeRole === undefined ? {} : { assumeRole }),
    partition,
    ...Object.fromEntries(Object.entries(endpoints).filter(([, v]) => v !== undefined)),
    timeoutMs: timeoutMs === 0 ? DEFAULT_API_TIMEOUT_MS : timeoutMs,
    skipBlockDevice,
    disableInstanceProfileSelectors,
  }
}

interface Document {
  accountId: string
  region: string
  instanceId: string
  availabilityZone: string
  imageId: string
  pendingTime: Date
}

function parseDocument(text: string): Document {
  const fail = (why: string): never => {
    throw new CloudAttestationError(AWS_IID, 'claims', `instance identity document: ${why}`)
  }
  let d: Record<string, unknown> = {}
  try {
    d = JSON.parse(text) as Record<string, unknown>
  } catch {
    fail('not JSON')
  }
  if (typeof d !== 'object' || d === null) fail('not a JSON object')
  const field = (k: string, re: RegExp): string => {
    const v = d[k]
    if (typeof v !== 'string' || !re.test(v))
      fail(`${k} ${JSON.stringify(v)?.slice(0, 60)} is missing or malformed`)
    return v as string
  }
  const pending = new Date(field('pendingTime', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/))
  if (Number.isNaN(pending.getTime())) fail('pendingTime is not a time')
  return {
    accountId: field('accountId', /^\d{12}$/),
    region: field('region', REGION),
    instanceId: field('instanceId', /^i-[0-9a-f]{8,32}$/),
    availabilityZone: field(
      'availabilityZone',
      /^[a-z]{2}(-[a-z]+)+-\d{1,2}[a-z]{1,2}$|^[a-z]{2}(-[a-z]+)+-\d{1,2}-[a-z0-9-]{1,40}$/,
    ),
    imageId: field('imageId', /^ami-[0-9a-f]{8,32}$/),
    pendingTime: pending,
  }
}

export function awsServerAttestor(
  cfg: AwsServerConfig,
  attested: AttestedLookup,
): ServerNodeAttestor {
  const api = cfg.api ? loadApi(cfg.api) : undefined
  return {
    kind: 'NodeAttestor',
    name: AWS_IID,
    async attest(payload, _challenge, ctx) {
      const p = parseAwsPayload(payload)
      // The region picks the certificate; it is only trusted once that certificate verified it.
      const doc = parseDocument(p.document)
      const certs = cfg.certificates.get(doc.region) ?? cfg.certificates.get('*') ?? []
      const now = ctx.now.getTime()
      const valid = certs.filter(
        (c) => Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo),
      )
      if (valid.length === 0) {
        throw new CloudAttestationError(
          AWS_IID,
          'signature',
          `no valid certificate is configured for region ${doc.region}`,
        )
      }
      let signedAt: Date | undefined
      if (p.signatureKind === 'signature') {
        const bytes = Buffer.from(p.document, 'utf8')
        const ok = valid.some((c) => {
          try {
            return verify('sha256', bytes, c.publicKey, p.signature)
          } catch {
            return false
          }
        })
        if (!ok)
          throw new CloudAttestationError(
            AWS_IID,
            'signature',
            `no certificate for ${doc.region} verifies the signature`,
          )
      } else {
        try {
          // SHA-1 only in AWS's own /pkcs7 (DSA) form, the one AWS publishes certificates for.
          const r = verifyPkcs7(p.signature, valid, p.signatureKind === 'pkcs7')
          if (!Buffer.from(r.content).equals(Buffer.from(p.document, 'utf8'))) {
            throw new CloudAttestationError(
              AWS_IID,
              'signature',
              'the document is not the one the signature covers',
            )
          }
          signedAt = r.signingTime
        } catch (err) {
          if (err instanceof Pkcs7Error) {
            throw new CloudAttestationError(
              AWS_IID,
              err.kind === 'malformed' ? 'payload' : 'signature',
              err.message,
              err,
            )
          }
          throw err
        }
      }
      if (!cfg.accounts.has(doc.accountId)) {
        throw new CloudAttestationError(
          AWS_IID,
          'account',
          `account ${doc.accountId} is not in account_ids`,
        )
      }
      const issued = (signedAt ?? doc.pendingTime).getTime()
      if (issued > now + 300_000) {
        throw new CloudAttestationError(
          AWS_IID,
          'expired',
          'the document was signed in the future: check the clocks',
        )
      }
      if (cfg.maxDocumentAge > 0 && now - issued > cfg.maxDocumentAge * 1000) {
        throw new CloudAttestationError(
          AWS_IID,
          'expired',
          `the document was signed ${Math.round((now - issued) / 1000)} s ago, over max_document_age ${cfg.maxDocumentAge} s`,
        )
      }
      const agentPath = `/spire/agent/${AWS_IID}/${doc.accountId}/${doc.region}/${doc.instanceId}`
      await checkFirstUse(AWS_IID, attested, ctx.trustDomain, agentPath, cfg.tofu)
      const selectors: Selector[] = [
        { type: AWS_IID, value: `az:${doc.availabilityZone}` },
        { type: AWS_IID, value: `image:id:${doc.imageId}` },
        { type: AWS_IID, value: `instance:id:${doc.instanceId}` },
        { type: AWS_IID, value: `region:${doc.region}` },
      ]
      // After the local checks and first use, so a refused document costs no API call.
      if (api)
        selectors.push(
          ...(await (await api()).selectors(doc.region, doc.accountId, doc.instanceId)),
        )
      return { agentPath, selectors, canReattest: false }
    },
  }
}
