/**
 * Broker authorization with Mosquitto's dynamic security plugin: the server, as the broker's
 * dynsec admin, keeps three kinds of roles in step with the shared topic layout.
 *
 * Mosquitto 2.0 (Debian's 2.0.11, checked) does NOT substitute %c / %u in dynsec ACLs; a pattern
 * `P/v1/bootstrap/%c/req` is matched literally and matches nothing. So:
 * - each attested agent gets its own role `<rolePrefix>agent-K` with literal topics, and its broker
 *   client is pinned to client id `agent-K`;
 * - the bootstrap role may publish to `P/v1/bootstrap/+/req` and subscribe to any *concrete*
 *   `P/v1/bootstrap/<session>/res`, but the wildcard subscription `P/v1/bootstrap/+/res` (and every
 *   wider filter) is denied. A bootstrap session id is 128 random bits that only its agent, the
 *   broker and the server see: holding the shared bootstrap password does not let one enumerate or
 *   read other sessions, and injecting into a session needs its id (and then only meets the signed,
 *   nonce-bound envelope). This is the nearest safe design to a per-client-id ACL on 2.0.
 */
import { randomBytes } from 'node:crypto'
import { SpiffeEdgeError } from '../../errors.js'
import {
  agentTopicKey,
  type BrokerAccess,
  type BrokerCredentials,
  mqttTopics,
} from './broker-access.js'
import {
  BrokerAdminError,
  type DynSecAcl,
  DynSecClient,
  type DynSecConnectOptions,
  isAlreadyExists,
  isNotFound,
} from './dynsec-client.js'

export interface BrokerLayoutOptions {
  /** Topic prefix P (default 'spiffe-edge'). */
  readonly topicPrefix?: string
  /** Shared subscription group of the server replicas (default 'spiffe-edge-server'). */
  readonly sharedGroup?: string
  /** Prefix of the role names this code owns (default 'spiffe-edge-'). */
  readonly rolePrefix?: string
}

export type MosquittoDynSecOptions = DynSecConnectOptions & BrokerLayoutOptions

const SEGMENT = /^[A-Za-z0-9._-]{1,64}$/

function checkSegments(what: string, value: string, allowSlash: boolean): void {
  const parts = allowSlash ? value.split('/') : [value]
  if (value.length > 128 || !parts.every((p) => SEGMENT.test(p))) {
    throw new SpiffeEdgeError('ERR_CONFIG', `${what} '${value}' is not topic-safe`, {
      remedy: `use letters, digits, '.', '_' and '-'${allowSlash ? " in '/'-separated segments" : ''}`,
    })
  }
}

/** The ACLs of every role, from the shared layout (exported for tests and the docs). */
export function roleAcls(layout: BrokerLayoutOptions = {}): {
  bootstrap: DynSecAcl[]
  server: DynSecAcl[]
  agent(k: string): DynSecAcl[]
} {
  const prefix = layout.topicPrefix ?? 'spiffe-edge'
  const group = layout.sharedGroup ?? 'spiffe-edge-server'
  checkSegments('topic prefix', prefix, true)
  checkSegments('shared subscription group', group, false)
  const t = mqttTopics(prefix)
  const anyBootstrapReq = t.bootstrapReq('+')
  const anyBootstrapRes = t.bootstrapRes('+')
  const anyAgentReq = t.agentReq('+')
  const anyAgentRes = t.agentRes('+')
  const allow = (acltype: DynSecAcl['acltype'], topic: string): DynSecAcl => ({
    acltype,
    topic,
    allow: true,
    priority: 0,
  })
  return {
    bootstrap: [
      allow('publishClientSend', anyBootstrapReq),
      // A pattern ACL: any filter it matches may be subscribed, i.e. one concrete session...
      allow('subscribePattern', anyBootstrapRes),
      // ...but not the one wildcard filter the pattern also matches (all sessions' replies).
      { acltype: 'subscribeLiteral', topic: anyBootstrapRes, allow: false, priority: 10 },
      allow('publishClientReceive', anyBootstrapRes),
      allow('unsubscribePattern', anyBootstrapRes),
    ],
    server: [
      // Mosquitto 2.0.11 checks a shared subscription with its $share/<group>/ prefix.
      allow('subscribeLiteral', `$share/${group}/${anyBootstrapReq}`),
      allow('subscribeLiteral', `$share/${group}/${anyAgentReq}`),
      allow('unsubscribeLiteral', `$share/${group}/${anyBootstrapReq}`),
      allow('unsubscribeLiteral', `$share/${group}/${anyAgentReq}`),
      allow('publishClientReceive', anyBootstrapReq),
      allow('publishClientReceive', anyAgentReq),
      allow('publishClientSend', anyBootstrapRes),
      allow('publishClientSend', anyAgentRes),
      allow('publishClientSend', t.bundle),
    ],
    agent: (k) => {
      if (!/^[0-9a-f]{32}$/.test(k)) throw new Error(`agent topic key '${k}' is not 32 hex chars`)
      return [
        allow('publishClientSend', t.agentReq(k)),
        allow('subscribeLiteral', t.agentRes(k)),
        allow('subscribeLiteral', t.bundle),
        allow('publishClientReceive', t.agentRes(k)),
        allow('publishClientReceive', t.bundle),
        allow('unsubscribeLiteral', t.agentRes(k)),
        allow('unsubscribeLiteral', t.bundle),
      ]
    },
  }
}

function aclKey(a: Pick<DynSecAcl, 'acltype' | 'topic'>): string {
  return `${a.acltype}\n${a.topic}`
}

function newPassword(): string {
  return randomBytes(24).toString('base64url')
}

export class MosquittoDynSec implements BrokerAccess {
  readonly admin: DynSecClient
  readonly rolePrefix: string
  readonly #acls: ReturnType<typeof roleAcls>
  // Grants and revokes of one agent run one after another, so a revoke never races a grant.
  readonly #chains = new Map<string, Promise<unknown>>()

  constructor(admin: DynSecClient, layout: BrokerLayoutOptions = {}) {
    this.admin = admin
    this.rolePrefix = layout.rolePrefix ?? 'spiffe-edge-'
    checkSegments('role prefix', this.rolePrefix.replace(/-$/, '') || 'x', false)
    this.#acls = roleAcls(layout)
  }

  static async connect(opts: MosquittoDynSecOptions): Promise<MosquittoDynSec> {
    // Validate the layout before touching the network.
    roleAcls(opts)
    const admin = await DynSecClient.connect(opts)
    return new MosquittoDynSec(admin, opts)
  }

  get bootstrapRole(): string {
    return `${this.rolePrefix}bootstrap`
  }

  get serverRole(): string {
    return `${this.rolePrefix}server`
  }

  agentRole(k: string): string {
    return `${this.rolePrefix}agent-${k}`
  }

  /**
   * Refuses a broker whose default lets any client publish or subscribe (then no role would
   * confine anyone), and creates or repairs the bootstrap and server roles.
   */
  async ensureRoles(): Promise<void> {
    const d = await this.admin.getDefaultACLAccess()
    if (d.publishClientSend || d.subscribe) {
      throw new BrokerAdminError(
        'ERR_BROKER_ADMIN_UNSAFE',
        'the broker lets every client publish or subscribe by default, so roles confine nobody',
        {
          remedy:
            'mosquitto_ctrl dynsec setDefaultACLAccess publishClientSend deny; mosquitto_ctrl dynsec setDefaultACLAccess subscribe deny',
        },
      )
    }
    await this.#ensureRole(this.bootstrapRole, this.#acls.bootstrap)
    await this.#ensureRole(this.serverRole, this.#acls.server)
  }

  /** Creates or repairs a role so that its ACLs are exactly `want`. */
  async #ensureRole(rolename: string, want: readonly DynSecAcl[]): Promise<void> {
    let have = await this.admin.getRole(rolename)
    if (have === undefined) {
      try {
        await this.admin.createRole(rolename, want)
        return
      } catch (err) {
        // Another replica created it in between: fall through and repair it.
        if (!isAlreadyExists(err)) throw err
      }
      have = await this.admin.getRole(rolename)
    }
    const current = have?.acls ?? []
    const wanted = new Map(want.map((a) => [aclKey(a), a]))
    for (const a of current) {
      const w = wanted.get(aclKey(a))
      if (w === undefined || w.allow !== a.allow || (w.priority ?? 0) !== (a.priority ?? 0)) {
        await this.admin.removeRoleACL(rolename, a)
      } else {
        wanted.delete(aclKey(a))
      }
    }
    for (const a of wanted.values()) await this.admin.addRoleACL(rolename, a)
  }

  /**
   * Creates or re-keys a long-lived client of the bootstrap or server role (broker set-up and
   * the simulator). Returns a fresh password; the previous one stops working.
   */
  async ensureServiceClient(
    kind: 'bootstrap' | 'server',
    username: string,
  ): Promise<BrokerCredentials> {
    checkSegments('user name', username, false)
    const role = kind === 'bootstrap' ? this.bootstrapRole : this.serverRole
    return this.#ensureClient(username, role, undefined, `spiffe-edge ${kind}`)
  }

  async grantAgent(agentSpiffeId: string): Promise<BrokerCredentials> {
    const k = agentTopicKey(agentSpiffeId)
    return this.#serial(k, async () => {
      await this.#ensureRole(this.agentRole(k), this.#acls.agent(k))
      const username = `agent-${k}`
      return this.#ensureClient(username, this.agentRole(k), username, agentSpiffeId)
    })
  }

  async revokeAgent(agentSpiffeId: string): Promise<void> {
    const k = agentTopicKey(agentSpiffeId)
    await this.#serial(k, async () => {
      // Deleting the client also disconnects its live connection (Mosquitto 2.0).
      for (const step of [
        () => this.admin.deleteClient(`agent-${k}`),
        () => this.admin.deleteRole(this.agentRole(k)),
      ]) {
        try {
          await step()
        } catch (err) {
          if (!isNotFound(err)) throw err
        }
      }
    })
  }

  async #ensureClient(
    username: string,
    rolename: string,
    clientid: string | undefined,
    textname: string,
  ): Promise<BrokerCredentials> {
    const password = newPassword()
    const create = (): Promise<void> =>
      this.admin.createClient({
        username,
        password,
        ...(clientid === undefined ? {} : { clientid }),
        textname,
        roles: [{ rolename }],
      })
    try {
      await create()
      return { username, password }
    } catch (err) {
      if (!isAlreadyExists(err)) throw err
    }
    const existing = await this.admin.getClient(username)
    const exact =
      existing !== undefined &&
      existing.clientid === clientid &&
      existing.disabled !== true &&
      existing.groups.length === 0 &&
      existing.roles.length === 1 &&
      existing.roles[0]!.rolename === rolename
    if (exact) {
      // Rotation: Mosquitto also disconnects the live connection, which must reconnect with this.
      await this.admin.setClientPassword(username, password)
    } else {
      // Anything else (extra roles, a group, another client id) is replaced, not trusted.
      try {
        await this.admin.deleteClient(username)
      } catch (err) {
        if (!isNotFound(err)) throw err
      }
      await create()
    }
    return { username, password }
  }

  #serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#chains.get(key) ?? Promise.resolve()
    const next = prev.then(fn, fn)
    const tail = next.catch(() => {})
    this.#chains.set(key, tail)
    void tail.then(() => {
      if (this.#chains.get(key) === tail) this.#chains.delete(key)
    })
    return next
  }

  async close(): Promise<void> {
    await this.admin.close()
  }
}
