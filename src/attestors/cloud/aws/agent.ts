/**
 * The aws_iid agent half: IMDSv2 only (a session token first, by PUT, then the document and the
 * chosen signature with it); IMDSv1's token-less GETs are never tried, so an instance that
 * requires IMDSv2 and one that does not behave the same.
 */
import type { Table } from '../../../common/config.js'
import type { AgentNodeAttestor } from '../../types.js'
import { DEFAULT_TIMEOUT_MS, metadataCall, noChallenge, PluginConfig } from '../common.js'
import {
  AWS_IID,
  DEFAULT_METADATA_URL,
  encodeAwsPayload,
  SIGNATURE_KINDS,
  type SignatureKind,
} from './protocol.js'

export interface AwsAgentConfig {
  readonly metadataUrl: string
  readonly signature: SignatureKind
  readonly timeoutMs: number
}

export function parseAwsAgentConfig(raw: Table): AwsAgentConfig {
  const c = new PluginConfig(`plugins.NodeAttestor.${AWS_IID}`, raw, [
    'metadata_url',
    'signature',
    'timeout_ms',
  ])
  const signature = c.string('signature') ?? 'pkcs7'
  if (!(SIGNATURE_KINDS as readonly string[]).includes(signature)) {
    c.problems.push(`signature: must be one of ${SIGNATURE_KINDS.join(', ')}`)
  }
  const cfg = {
    metadataUrl: c.url('metadata_url') ?? DEFAULT_METADATA_URL,
    signature: signature as SignatureKind,
    timeoutMs: c.int('timeout_ms', DEFAULT_TIMEOUT_MS, 60_000) || DEFAULT_TIMEOUT_MS,
  }
  c.done()
  return cfg
}

/** The session token only needs to outlive the two GETs that follow it. */
const TOKEN_TTL_SECONDS = '60'

export function awsAgentAttestor(cfg: AwsAgentConfig): AgentNodeAttestor {
  return {
    kind: 'NodeAttestor',
    name: AWS_IID,
    async payload() {
      const base = cfg.metadataUrl
      const t = cfg.timeoutMs
      const token = (
        await metadataCall('getting an IMDSv2 session token', {
          url: `${base}/latest/api/token`,
          method: 'PUT',
          headers: { 'X-aws-ec2-metadata-token-ttl-seconds': TOKEN_TTL_SECONDS },
          timeoutMs: t,
          maxBytes: 1024,
        })
      ).body
      const headers = { 'X-aws-ec2-metadata-token': token }
      const document = (
        await metadataCall('fetching the instance identity document', {
          url: `${base}/latest/dynamic/instance-identity/document`,
          headers,
          timeoutMs: t,
        })
      ).body
      const signature = (
        await metadataCall(`fetching the instance identity ${cfg.signature}`, {
          url: `${base}/latest/dynamic/instance-identity/${cfg.signature}`,
          headers,
          timeoutMs: t,
        })
      ).body
      return encodeAwsPayload({
        document,
        signatureKind: cfg.signature,
        signature: new Uint8Array(Buffer.from(signature.replace(/\s+/g, ''), 'base64')),
      })
    },
    respond: noChallenge(AWS_IID),
  }
}
