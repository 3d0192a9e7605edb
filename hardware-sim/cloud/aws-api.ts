/**
 * The simulated AWS control-plane APIs the aws_iid server may call, as they are on the wire:
 * the Query protocol (POST form, Action + Version) answered in XML, every request SigV4-signed
 * and checked here against the configured key (an implementation of our own, independent of
 * the SDK that signs, so a signing mistake on either side shows), with the services' own error
 * shapes: EC2's <Response><Errors> (AuthFailure, InvalidInstanceID.NotFound) and IAM/STS's
 * <ErrorResponse> (InvalidClientTokenId, SignatureDoesNotMatch, AccessDenied, NoSuchEntity).
 *   EC2 DescribeInstances (InstanceId.N), IAM GetInstanceProfile, STS AssumeRole.
 * One endpoint serves all three (the credential scope names the service), beside IMDS.
 */
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'

export interface AwsApiIdentity {
  readonly accountId: string
  readonly region: string
  readonly availabilityZone: string
  readonly instanceId: string
  readonly imageId: string
  readonly tags: Readonly<Record<string, string>>
  readonly securityGroups: readonly { readonly id: string; readonly name: string }[]
  /** The instance profile ARN and its roles' ARNs; undefined: none attached. */
  readonly instanceProfile?: { readonly arn: string; readonly roles: readonly string[] }
  readonly awsApi: {
    readonly accessKeyId: string
    readonly secretAccessKey: string
    /** Role ARNs these credentials may assume. */
    readonly assumableRoles: readonly string[]
  }
  /** Seconds between the network interface's and the root volume's attachment (SPIRE refuses > 60). */
  readonly rootVolumeAttachDelay: number
}

const MAX_BODY = 64 * 1024
const MAX_SKEW_MS = 15 * 60_000

const xmlEscape = (s: string) =>
  s.replace(
    /[<>&'"]/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!,
  )

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')
const hmac = (k: Buffer | string, s: string) => createHmac('sha256', k).update(s).digest()
const rfc3986 = (s: string) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

type Service = 'ec2' | 'iam' | 'sts'
const ACTIONS: Readonly<Record<string, Service>> = {
  DescribeInstances: 'ec2',
  GetInstanceProfile: 'iam',
  AssumeRole: 'sts',
}
const NS: Readonly<Record<Service, string>> = {
  ec2: 'http://ec2.amazonaws.com/doc/2016-11-15/',
  iam: 'https://iam.amazonaws.com/doc/2010-05-08/',
  sts: 'https://sts.amazonaws.com/doc/2011-06-15/',
}

class ApiFault extends Error {
  readonly status: number
  readonly code: string

  constructor(status: number, code: string, message: string) {
    super(message)
    this.status = status
    this.code = code
  }
}

function sendXml(res: ServerResponse, status: number, xml: string) {
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n${xml}`
  res.writeHead(status, {
    'Content-Type': 'text/xml;charset=UTF-8',
    'Content-Length': Buffer.byteLength(body),
    'x-amzn-RequestId': randomUUID(),
  })
  res.end(body)
}

function sendFault(res: ServerResponse, service: Service, f: ApiFault) {
  const id = randomUUID()
  const msg = xmlEscape(f.message)
  if (service === 'ec2') {
    return sendXml(
      res,
      f.status,
      `<Response><Errors><Error><Code>${f.code}</Code><Message>${msg}</Message></Error></Errors><RequestID>${id}</RequestID></Response>`,
    )
  }
  sendXml(
    res,
    f.status,
    `<ErrorResponse xmlns="${NS[service]}"><Error><Type>Sender</Type><Code>${f.code}</Code><Message>${msg}</Message></Error><RequestId>${id}</RequestId></ErrorResponse>`,
  )
}

interface Credential {
  readonly secret: string
  readonly sessionToken?: string
  readonly expires?: number
}

/** Checks the request's SigV4 Authorization against the known keys; returns the signed service. */
function verifySigV4(
  req: IncomingMessage,
  url: URL,
  body: Buffer,
  keys: ReadonlyMap<string, Credential>,
  service: Service,
): void {
  const badToken = () =>
    service === 'ec2'
      ? new ApiFault(
          401,
          'AuthFailure',
          'AWS was not able to validate the provided access credentials',
        )
      : new ApiFault(
          403,
          'InvalidClientTokenId',
          'The security token included in the request is invalid.',
        )
  const badSig = () =>
    service === 'ec2'
      ? new ApiFault(
          401,
          'AuthFailure',
          'AWS was not able to validate the provided access credentials',
        )
      : new ApiFault(
          403,
          'SignatureDoesNotMatch',
          'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
        )
  const auth = String(req.headers.authorization ?? '')
  const m =
    /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([a-z0-9-]+)\/([a-z0-9]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(
      auth,
    )
  if (!m)
    throw new ApiFault(400, 'MissingAuthenticationToken', 'Request is missing Authentication Token')
  const [, keyId, day, region, scopeService, signedHeaders, signature] = m as unknown as string[]
  if (scopeService !== service) {
    throw new ApiFault(
      403,
      'SignatureDoesNotMatch',
      `Credential should be scoped to correct service: '${service}'.`,
    )
  }
  const amzDate = String(req.headers['x-amz-date'] ?? '')
  const when = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(amzDate)
  if (!when || amzDate.slice(0, 8) !== day) throw badSig()
  const t = Date.UTC(+when[1]!, +when[2]! - 1, +when[3]!, +when[4]!, +when[5]!, +when[6]!)
  if (Math.abs(Date.now() - t) > MAX_SKEW_MS) {
    throw new ApiFault(
      400,
      service === 'ec2' ? 'RequestExpired' : 'SignatureDoesNotMatch',
      'Signature expired',
    )
  }
  const cred = keys.get(keyId!)
  if (!cred || (cred.expires !== undefined && cred.expires < Date.now())) throw badToken()
  const token = req.headers['x-amz-security-token']
  if ((cred.sessionToken ?? '') !== (token ?? '')) throw badToken()
  const names = signedHeaders!.split(';')
  if (!names.includes('host') || !names.includes('x-amz-date')) throw badSig()
  const canonicalHeaders = names
    .map((n) => {
      const v = req.headers[n]
      if (v === undefined) throw badSig()
      return `${n}:${(Array.isArray(v) ? v.join(',') : v).trim().replace(/\s+/g, ' ')}\n`
    })
    .join('')
  const query = [...url.searchParams]
    .map(([k, v]) => [rfc3986(k), rfc3986(v)] as const)
    .sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? -1 : 1) : a[0] < b[0] ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join('&')
  const canonical = [
    req.method,
    url.pathname,
    query,
    canonicalHeaders,
    signedHeaders,
    sha256(body),
  ].join('\n')
  const scope = `${day}/${region}/${service}/aws4_request`
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n')
  const kSigning = hmac(
    hmac(hmac(hmac(`AWS4${cred.secret}`, day!), region!), service),
    'aws4_request',
  )
  const expected = hmac(kSigning, toSign)
  if (!timingSafeEqual(expected, Buffer.from(signature!, 'hex'))) throw badSig()
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length
    if (size > MAX_BODY) throw new ApiFault(413, 'RequestEntityTooLarge', 'Request body too large')
    chunks.push(c)
  }
  return Buffer.concat(chunks)
}

const items = (xs: readonly string[]) =>
  xs.length === 0 ? '' : `<item>${xs.join('</item><item>')}</item>`

export function awsApiHandler(id: AwsApiIdentity, startedAt: Date) {
  const keys = new Map<string, Credential>([
    [id.awsApi.accessKeyId, { secret: id.awsApi.secretAccessKey }],
  ])
  const launch = startedAt.toISOString()
  const rootAttach = new Date(startedAt.getTime() + id.rootVolumeAttachDelay * 1000).toISOString()

  const describeInstances = (form: URLSearchParams): string => {
    const wanted = [...form].filter(([k]) => /^InstanceId\.\d+$/.test(k)).map(([, v]) => v)
    for (const w of wanted) {
      if (w !== id.instanceId)
        throw new ApiFault(
          400,
          'InvalidInstanceID.NotFound',
          `The instance ID '${w}' does not exist`,
        )
    }
    const tags = items(
      Object.entries(id.tags).map(
        ([k, v]) => `<key>${xmlEscape(k)}</key><value>${xmlEscape(v)}</value>`,
      ),
    )
    const groups = items(
      id.securityGroups.map(
        (g) => `<groupId>${xmlEscape(g.id)}</groupId><groupName>${xmlEscape(g.name)}</groupName>`,
      ),
    )
    const profile = id.instanceProfile
      ? `<iamInstanceProfile><arn>${xmlEscape(id.instanceProfile.arn)}</arn><id>AIPA${randomBytes(8).toString('hex').toUpperCase()}</id></iamInstanceProfile>`
      : ''
    const instance =
      `<instanceId>${id.instanceId}</instanceId><imageId>${id.imageId}</imageId>` +
      '<instanceState><code>16</code><name>running</name></instanceState><instanceType>t3.micro</instanceType>' +
      `<launchTime>${launch}</launchTime><placement><availabilityZone>${id.availabilityZone}</availabilityZone><tenancy>default</tenancy></placement>` +
      `<groupSet>${groups}</groupSet><rootDeviceType>ebs</rootDeviceType><rootDeviceName>/dev/xvda</rootDeviceName>` +
      `<blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-0${randomBytes(8).toString('hex')}</volumeId><status>attached</status><attachTime>${rootAttach}</attachTime><deleteOnTermination>true</deleteOnTermination></ebs></item></blockDeviceMapping>` +
      profile +
      `<networkInterfaceSet><item><networkInterfaceId>eni-0${randomBytes(8).toString('hex')}</networkInterfaceId><ownerId>${id.accountId}</ownerId><status>in-use</status>` +
      `<attachment><attachmentId>eni-attach-0${randomBytes(8).toString('hex')}</attachmentId><deviceIndex>0</deviceIndex><status>attached</status><attachTime>${launch}</attachTime><deleteOnTermination>true</deleteOnTermination></attachment>` +
      `<groupSet>${groups}</groupSet></item></networkInterfaceSet>` +
      `<tagSet>${tags}</tagSet>`
    return (
      `<DescribeInstancesResponse xmlns="${NS.ec2}"><requestId>${randomUUID()}</requestId><reservationSet><item>` +
      `<reservationId>r-0${randomBytes(8).toString('hex')}</reservationId><ownerId>${id.accountId}</ownerId><groupSet/>` +
      `<instancesSet><item>${instance}</item></instancesSet></item></reservationSet></DescribeInstancesResponse>`
    )
  }

  const getInstanceProfile = (form: URLSearchParams): string => {
    const name = form.get('InstanceProfileName') ?? ''
    const p = id.instanceProfile
    if (!p || p.arn.split('/').at(-1) !== name) {
      throw new ApiFault(404, 'NoSuchEntity', `Instance Profile ${name} cannot be found.`)
    }
    const roles = p.roles
      .map(
        (arn) =>
          `<member><Path>/</Path><Arn>${xmlEscape(arn)}</Arn><RoleName>${xmlEscape(arn.split('/').at(-1)!)}</RoleName>` +
          `<CreateDate>${launch}</CreateDate><RoleId>AROA${randomBytes(8).toString('hex').toUpperCase()}</RoleId></member>`,
      )
      .join('')
    return (
      `<GetInstanceProfileResponse xmlns="${NS.iam}"><GetInstanceProfileResult><InstanceProfile>` +
      `<InstanceProfileId>AIPA${randomBytes(8).toString('hex').toUpperCase()}</InstanceProfileId><Roles>${roles}</Roles>` +
      `<InstanceProfileName>${xmlEscape(name)}</InstanceProfileName><Path>/</Path><Arn>${xmlEscape(p.arn)}</Arn><CreateDate>${launch}</CreateDate>` +
      `</InstanceProfile></GetInstanceProfileResult><ResponseMetadata><RequestId>${randomUUID()}</RequestId></ResponseMetadata></GetInstanceProfileResponse>`
    )
  }

  const assumeRole = (form: URLSearchParams, callerKey: string): string => {
    const arn = form.get('RoleArn') ?? ''
    const session = form.get('RoleSessionName') ?? ''
    if (!id.awsApi.assumableRoles.includes(arn) || callerKey !== id.awsApi.accessKeyId) {
      throw new ApiFault(
        403,
        'AccessDenied',
        `User: arn:aws:iam::${id.accountId}:user/spiffe-edge-server is not authorized to perform: sts:AssumeRole on resource: ${arn}`,
      )
    }
    const duration = Math.min(
      Math.max(Number(form.get('DurationSeconds') ?? 3600) || 3600, 900),
      43200,
    )
    const keyId = `ASIA${randomBytes(8).toString('hex').toUpperCase()}`
    const secret = randomBytes(30).toString('base64')
    const token = randomBytes(48).toString('base64')
    const expires = Date.now() + duration * 1000
    if (keys.size > 10_000)
      for (const [k, c] of keys)
        if (c.expires !== undefined && c.expires < Date.now()) keys.delete(k)
    keys.set(keyId, { secret, sessionToken: token, expires })
    return (
      `<AssumeRoleResponse xmlns="${NS.sts}"><AssumeRoleResult><AssumedRoleUser>` +
      `<Arn>${xmlEscape(arn.replace(':iam:', ':sts:').replace(':role/', ':assumed-role/'))}/${xmlEscape(session)}</Arn>` +
      `<AssumedRoleId>AROA${randomBytes(8).toString('hex').toUpperCase()}:${xmlEscape(session)}</AssumedRoleId></AssumedRoleUser>` +
      `<Credentials><AccessKeyId>${keyId}</AccessKeyId><SecretAccessKey>${secret}</SecretAccessKey><SessionToken>${token}</SessionToken>` +
      `<Expiration>${new Date(expires).toISOString()}</Expiration></Credentials></AssumeRoleResult>` +
      `<ResponseMetadata><RequestId>${randomUUID()}</RequestId></ResponseMetadata></AssumeRoleResponse>`
    )
  }

  return async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    let service: Service = 'ec2'
    try {
      const body = await readBody(req)
      const form = new URLSearchParams(body.toString('utf8'))
      const action = form.get('Action') ?? ''
      const s = ACTIONS[action]
      if (!s)
        throw new ApiFault(
          400,
          'InvalidAction',
          `The action ${action} is not valid for this web service.`,
        )
      service = s
      verifySigV4(req, url, body, keys, service)
      const keyId = /Credential=([^/]+)\//.exec(String(req.headers.authorization))![1]!
      const xml =
        action === 'DescribeInstances'
          ? describeInstances(form)
          : action === 'GetInstanceProfile'
            ? getInstanceProfile(form)
            : assumeRole(form, keyId)
      sendXml(res, 200, xml)
    } catch (err) {
      if (err instanceof ApiFault) return sendFault(res, service, err)
      throw err
    }
  }
}
