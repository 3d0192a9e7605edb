/**
 * The seam between the server's MQTT listener and broker authorization, and the topic layout both
 * sides (and the broker's ACLs) share. The listener only asks for credentials for an attested
 * agent and revokes them; how a broker stores them (Mosquitto dynamic security, EMQX, AWS IoT) is
 * the implementation's business (src/transport/mqtt/dynsec.ts for Mosquitto).
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

/**
 * The agent's topic key K: the first 32 hex chars of sha256(agent SPIFFE ID). SPIFFE IDs may hold
 * characters MQTT topics and ACL patterns cannot (+ # /), and a hash keeps every topic the same
 * length; 128 bits leave no practical collision.
 */
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
