/**
 * The seam between the MQTT server side and broker authorization. The server grants an attested
 * agent its own broker client and revokes it on eviction or ban; how that maps onto a broker's
 * tools (Mosquitto dynamic security, EMQX, AWS IoT) lives behind this interface.
 */
import { createHash } from 'node:crypto'

export interface BrokerCredentials {
  readonly username: string
  readonly password: string
}

export interface BrokerAccess {
  /** Creates (or replaces the password of) the broker client for an attested agent; its role allows only K's topics and the bundle topic. */
  grantAgent(agentSpiffeId: string): Promise<BrokerCredentials>
  /** Deletes the agent's broker client (eviction, ban). Idempotent. */
  revokeAgent(agentSpiffeId: string): Promise<void>
  close(): Promise<void>
}

/** K: the first 32 hex chars of sha256(agent SPIFFE ID), so topics never carry the ID's own characters. */
export function agentTopicKey(agentSpiffeId: string): string {
  return createHash('sha256').update(agentSpiffeId, 'utf8').digest('hex').slice(0, 32)
}

export function mqttTopics(prefix: string): {
  bootstrapReq(clientId: string): string
  bootstrapRes(clientId: string): string
  agentReq(k: string): string
  agentRes(k: string): string
  bundle: string
} {
  return {
    bootstrapReq: (clientId) => `${prefix}/v1/bootstrap/${clientId}/req`,
    bootstrapRes: (clientId) => `${prefix}/v1/bootstrap/${clientId}/res`,
    agentReq: (k) => `${prefix}/v1/agent/${k}/req`,
    agentRes: (k) => `${prefix}/v1/agent/${k}/res`,
    bundle: `${prefix}/v1/bundle`,
  }
}
