/**
 * The aws_iid server's optional EC2/IAM lookups (SPIRE's: DescribeInstances for the attested
 * instance, IAM GetInstanceProfile for its roles, STS AssumeRole into the instance's account when
 * assume_role is set), through the AWS SDK: it brings SigV4 and the EC2/IAM Query protocols, so
 * none of that is ours. Ours are the bounds: a deadline over each call including its one retry,
 * a connect timeout, and a cap on every answer's size (the SDK reads bodies unbounded), and the
 * fail-closed rule: with lookups configured, no answer means no attestation.
 */
import { type Readable, Transform } from 'node:stream'
import {
  DescribeInstancesCommand,
  type DescribeInstancesCommandOutput,
  EC2Client,
  type Instance,
} from '@aws-sdk/client-ec2'
import {
  GetInstanceProfileCommand,
  type GetInstanceProfileCommandOutput,
  IAMClient,
} from '@aws-sdk/client-iam'
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts'
import { NodeHttpHandler } from '@smithy/node-http-handler'
import type { Selector } from '../../types.js'
import { CloudAttestationError } from '../common.js'
import { AWS_IID } from './protocol.js'

export interface AwsCredentials {
  readonly accessKeyId: string
  readonly secretAccessKey: string
  readonly sessionToken?: string
}

export interface AwsApiConfig {
  readonly credentials: AwsCredentials
  /** Where the credentials came from, for the start-up log. */
  readonly source: 'config' | 'environment'
  /** A role name assumed in the instance's account (SPIRE's assume_role). */
  readonly assumeRole?: string
  readonly partition: string
  readonly ec2Endpoint?: string
  readonly iamEndpoint?: string
  readonly stsEndpoint?: string
  readonly timeoutMs: number
  readonly skipBlockDevice: boolean
  readonly disableInstanceProfileSelectors: boolean
}

/** A DescribeInstances answer for one instance is a few KiB; 1 MiB is far beyond any real one. */
export const MAX_AWS_ANSWER = 1024 * 1024
/** SPIRE's limit between the primary network interface's and the root volume's attach times. */
const MAX_ATTACH_DELTA_SECONDS = 60
const MAX_TAGS = 64
const MAX_GROUPS = 64
const MAX_ROLES = 16

/** NodeHttpHandler whose response bodies fail once they pass max bytes. */
class CappedHandler extends NodeHttpHandler {
  private readonly max: number

  constructor(timeoutMs: number, max: number) {
    super({
      connectionTimeout: Math.min(timeoutMs, 5000),
      requestTimeout: timeoutMs,
      throwOnRequestTimeout: true,
    })
    this.max = max
  }

  override async handle(...args: Parameters<NodeHttpHandler['handle']>) {
    const out = await super.handle(...args)
    const max = this.max
    const declared = Number(out.response.headers['content-length'] ?? '0')
    const body = out.response.body as Readable
    if (declared > max) {
      body.destroy()
      throw new Error(`the answer of ${declared} bytes is over ${max}`)
    }
    let size = 0
    const capped = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length
        if (size > max) cb(new Error(`the answer is over ${max} bytes`))
        else cb(null, chunk)
      },
    })
    body.once('error', (e) => capped.destroy(e))
    body.pipe(capped)
    out.response.body = capped
    return out
  }
}

const GLOBAL_REGION: Readonly<Record<string, string>> = {
  aws: 'us-east-1',
  'aws-cn': 'cn-north-1',
  'aws-us-gov': 'us-gov-west-1',
}

function refuse(what: string, err: unknown): never {
  if (err instanceof CloudAttestationError) throw err
  const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } }
  const status = e.$metadata?.httpStatusCode
  const name = e.name ?? 'Error'
  if (name.startsWith('InvalidInstanceID')) {
    throw new CloudAttestationError(AWS_IID, 'instance', `${what}: ${name}: ${e.message}`, err)
  }
  const why = name === 'TimeoutError' || name === 'AbortError' ? 'no answer in time' : e.message
  throw new CloudAttestationError(
    AWS_IID,
    'api',
    `${what} failed: ${name}${status ? ` (HTTP ${status})` : ''}: ${String(why).slice(0, 300)}`,
    err,
  )
}

export class AwsApi {
  private readonly handler: CappedHandler
  private readonly ec2 = new Map<string, EC2Client>()
  private iam: IAMClient | undefined
  private sts: STSClient | undefined

  readonly cfg: AwsApiConfig

  constructor(cfg: AwsApiConfig) {
    this.cfg = cfg
    this.handler = new CappedHandler(cfg.timeoutMs, MAX_AWS_ANSWER)
  }

  private common(region: string, endpoint: string | undefined) {
    return {
      region,
      requestHandler: this.handler,
      maxAttempts: 2,
      ...(endpoint === undefined ? {} : { endpoint }),
    }
  }

  private signal(): AbortSignal {
    return AbortSignal.timeout(this.cfg.timeoutMs)
  }

  /** Credentials for calls about an instance of this account: the configured ones, or the assumed role's. */
  private credentialsFor(region: string, account: string) {
    const role = this.cfg.assumeRole
    if (role === undefined) return this.cfg.credentials
    this.sts ??= new STSClient({
      ...this.common(GLOBAL_REGION[this.cfg.partition] ?? 'us-east-1', this.cfg.stsEndpoint),
      credentials: this.cfg.credentials,
    })
    const sts = this.sts
    const arn = `arn:${this.cfg.partition}:iam::${account}:role/${role}`
    // The SDK calls this when it has no credentials or they are about to expire.
    return async () => {
      try {
        const out = await sts.send(
          new AssumeRoleCommand({
            RoleArn: arn,
            RoleSessionName: `spiffe-edge-${region}`,
            DurationSeconds: 900,
          }),
          { abortSignal: this.signal() },
        )
        const c = out.Credentials
        if (!c?.AccessKeyId || !c.SecretAccessKey)
          throw new Error('AssumeRole returned no credentials')
        return {
          accessKeyId: c.AccessKeyId,
          secretAccessKey: c.SecretAccessKey,
          ...(c.SessionToken ? { sessionToken: c.SessionToken } : {}),
          ...(c.Expiration ? { expiration: c.Expiration } : {}),
        }
      } catch (err) {
        refuse(`STS AssumeRole ${arn}`, err)
      }
    }
  }

  private ec2For(region: string, account: string): EC2Client {
    const key = this.cfg.assumeRole === undefined ? region : `${region}/${account}`
    let c = this.ec2.get(key)
    if (!c) {
      if (this.ec2.size >= 256) this.ec2.clear()
      c = new EC2Client({
        ...this.common(region, this.cfg.ec2Endpoint),
        credentials: this.credentialsFor(region, account),
      })
      this.ec2.set(key, c)
    }
    return c
  }

  async describeInstance(region: string, account: string, instanceId: string): Promise<Instance> {
    let out: DescribeInstancesCommandOutput
    try {
      out = await this.ec2For(region, account).send(
        new DescribeInstancesCommand({ InstanceIds: [instanceId] }),
        { abortSignal: this.signal() },
      )
    } catch (err) {
      refuse(`EC2 DescribeInstances ${instanceId} in ${region}`, err)
    }
    const found = (out.Reservations ?? [])
      .flatMap((r) => r.Instances ?? [])
      .filter((i) => i.InstanceId === instanceId)
    if (found.length !== 1) {
      throw new CloudAttestationError(
        AWS_IID,
        'instance',
        `EC2 DescribeInstances knows no instance ${instanceId} in ${region}`,
      )
    }
    return found[0]!
  }

  async instanceProfileRoles(
    profileArn: string,
    region: string,
    account: string,
  ): Promise<string[]> {
    // arn:aws:iam::<account>:instance-profile[/path]/<name>: the name is the last segment.
    const name = /:instance-profile\/(?:.*\/)?([\w+=,.@-]{1,128})$/.exec(profileArn)?.[1]
    if (!name) {
      throw new CloudAttestationError(
        AWS_IID,
        'api',
        `EC2 answered an instance profile ARN ${JSON.stringify(profileArn.slice(0, 200))} that is not one`,
      )
    }
    this.iam ??= new IAMClient({
      ...this.common(GLOBAL_REGION[this.cfg.partition] ?? 'us-east-1', this.cfg.iamEndpoint),
      credentials: this.credentialsFor(region, account),
    })
    let out: GetInstanceProfileCommandOutput
    try {
      out = await this.iam.send(new GetInstanceProfileCommand({ InstanceProfileName: name }), {
        abortSignal: this.signal(),
      })
    } catch (err) {
      refuse(`IAM GetInstanceProfile ${name}`, err)
    }
    const roles = (out.InstanceProfile?.Roles ?? [])
      .map((r) => r.Arn)
      .filter((a): a is string => !!a)
    if (roles.length > MAX_ROLES)
      throw new CloudAttestationError(
        AWS_IID,
        'api',
        `IAM answered ${roles.length} roles, over ${MAX_ROLES}`,
      )
    return roles
  }

  /** SPIRE's anti-tampering rule: the root volume was attached with the instance, not swapped in later. */
  checkBlockDevice(i: Instance): void {
    if (this.cfg.skipBlockDevice) return
    const fail = (why: string): never => {
      throw new CloudAttestationError(
        AWS_IID,
        'instance',
        `${i.InstanceId}: ${why} (skip_block_device = true turns this check off)`,
      )
    }
    const eni = (i.NetworkInterfaces ?? [])[0]?.Attachment
    if (eni?.DeviceIndex !== 0 || !eni.AttachTime)
      fail('network interface 0 has no attachment at device index 0')
    if (i.RootDeviceType === 'instance-store') return
    const root = (i.BlockDeviceMappings ?? []).find((b) => b.DeviceName === i.RootDeviceName)
    const attached = root?.Ebs?.AttachTime
    if (!attached)
      fail(`root device ${i.RootDeviceName ?? '?'} is not in the block device mappings`)
    const delta = (attached!.getTime() - eni!.AttachTime!.getTime()) / 1000
    if (delta > MAX_ATTACH_DELTA_SECONDS) {
      fail(
        `the root volume was attached ${Math.round(delta)} s after the instance's network interface, over ${MAX_ATTACH_DELTA_SECONDS} s`,
      )
    }
  }

  /** The selectors SPIRE derives from the API: tag:, sg:id:, sg:name:, iamrole:. */
  async selectors(region: string, account: string, instanceId: string): Promise<Selector[]> {
    const i = await this.describeInstance(region, account, instanceId)
    this.checkBlockDevice(i)
    const tags = i.Tags ?? []
    const groups = i.SecurityGroups ?? []
    if (tags.length > MAX_TAGS || groups.length > MAX_GROUPS) {
      throw new CloudAttestationError(
        AWS_IID,
        'api',
        `EC2 answered ${tags.length} tags and ${groups.length} security groups, over ${MAX_TAGS}/${MAX_GROUPS}`,
      )
    }
    const out: Selector[] = []
    for (const t of tags)
      if (t.Key !== undefined) out.push({ type: AWS_IID, value: `tag:${t.Key}:${t.Value ?? ''}` })
    for (const g of groups) {
      if (g.GroupId) out.push({ type: AWS_IID, value: `sg:id:${g.GroupId}` })
      if (g.GroupName) out.push({ type: AWS_IID, value: `sg:name:${g.GroupName}` })
    }
    const profile = i.IamInstanceProfile?.Arn
    if (profile && !this.cfg.disableInstanceProfileSelectors) {
      for (const arn of await this.instanceProfileRoles(profile, region, account)) {
        out.push({ type: AWS_IID, value: `iamrole:${arn}` })
      }
    }
    return out
  }
}
