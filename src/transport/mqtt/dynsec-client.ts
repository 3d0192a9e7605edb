/**
 * A typed client of Mosquitto's dynamic security API (`$CONTROL/dynamic-security/v1`), over the
 * `mqtt` package. Requests are batches of commands in one JSON message; the plugin answers all of
 * them in one message on the shared response topic, which every admin connection receives, so each
 * command carries a random correlationData and replies that are not ours are ignored.
 * Bounded: a response size cap (also announced to the broker as the maximum packet size), a
 * timeout per batch, a cap on batches in flight. Passwords never appear in errors or logs.
 */
import { randomBytes } from 'node:crypto'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { SpiffeEdgeError } from '../../errors.js'
import { BrokerAdminError, connectError, isNotFound } from './dynsec-errors.js'
import {
  type DynSecAcl,
  type DynSecClientInfo,
  type DynSecDefaultAcl,
  type DynSecRoleInfo,
  parseClientInfo,
  parseDefaultAcl,
  parseRoleInfo,
} from './dynsec-types.js'

export {
  BrokerAdminError,
  isAlreadyExists,
  isNotFound,
  readPasswordFile,
} from './dynsec-errors.js'
export type { DynSecAcl, DynSecAclType, DynSecClientInfo, DynSecRoleInfo } from './dynsec-types.js'

const REQUEST_TOPIC = '$CONTROL/dynamic-security/v1'
const RESPONSE_TOPIC = '$CONTROL/dynamic-security/v1/response'
const MAX_IN_FLIGHT = 64
const MAX_COMMANDS_PER_BATCH = 100

export interface DynSecConnectOptions {
  /** mqtt://host:port or mqtts://host:port */
  readonly url: string
  readonly username: string
  readonly password: string
  /** PEM CA(s) the broker's TLS certificate must chain to (mqtts). */
  readonly ca?: Buffer
  readonly clientId?: string
  /** Per batch of commands (default 10 s): a broker that is down is reported, not waited for forever. */
  readonly timeoutMs?: number
  /** First connection (default 10 s). */
  readonly connectTimeoutMs?: number
  /** Largest response accepted (default 1 MiB); listings are paged to stay below it. */
  readonly maxResponseBytes?: number
  /** Delay between reconnect attempts after the broker went away (default 1 s). */
  readonly reconnectPeriodMs?: number
}

export interface DynSecCommand {
  readonly command: string
  readonly [field: string]: unknown
}

export interface DynSecResult {
  readonly command: string
  readonly data?: unknown
}

interface Pending {
  readonly ids: readonly string[]
  readonly commands: readonly string[]
  resolve(results: DynSecResult[]): void
  reject(err: unknown): void
}

interface RawResponse {
  command?: unknown
  error?: unknown
  data?: unknown
  correlationData?: unknown
}

export class DynSecClient {
  readonly #mqtt: MqttClient
  readonly #timeoutMs: number
  readonly #maxResponseBytes: number
  readonly #pending = new Map<string, Pending>()
  readonly #url: string
  #closed = false
  #lastError: BrokerAdminError | undefined

  private constructor(client: MqttClient, opts: DynSecConnectOptions) {
    this.#mqtt = client
    this.#url = opts.url
    this.#timeoutMs = opts.timeoutMs ?? 10_000
    this.#maxResponseBytes = opts.maxResponseBytes ?? 1024 * 1024
    client.on('message', (topic, payload) => {
      if (topic === RESPONSE_TOPIC) this.#onResponse(payload)
    })
    // Later errors (broker restarts) are retried by the reconnect loop; the last one is kept so
    // a command that finds no connection can say why (refused admin vs. broker gone).
    client.on('error', (err) => {
      this.#lastError = connectError(err, opts.url, opts.username)
    })
    client.on('connect', () => {
      this.#lastError = undefined
    })
  }

  /** Connects as the dynsec admin and subscribes to the response topic; reconnects on its own later. */
  static async connect(opts: DynSecConnectOptions): Promise<DynSecClient> {
    const maxResponseBytes = opts.maxResponseBytes ?? 1024 * 1024
    const options: IClientOptions = {
      protocolVersion: 5,
      username: opts.username,
      password: opts.password,
      clientId: opts.clientId ?? `spiffe-edge-admin-${randomBytes(8).toString('hex')}`,
      clean: true,
      // Commands are sent at QoS 0 and never queued offline: a command that times out must not
      // run minutes later when the link comes back (a late createClient would resurrect a client).
      queueQoSZero: false,
      reconnectPeriod: opts.reconnectPeriodMs ?? 1000,
      connectTimeout: opts.connectTimeoutMs ?? 10_000,
      // The broker drops larger packets for us instead of making us parse them.
      properties: { maximumPacketSize: maxResponseBytes + 4096 },
      ...(opts.ca === undefined ? {} : { ca: [opts.ca], rejectUnauthorized: true }),
    }
    const client = mqtt.connect(opts.url, options)
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(connectError(new Error('connect timed out'), opts.url, opts.username)),
          (opts.connectTimeoutMs ?? 10_000) + 1000,
        )
        client.once('connect', () => {
          clearTimeout(timer)
          resolve()
        })
        client.once('error', (err) => {
          clearTimeout(timer)
          reject(connectError(err, opts.url, opts.username))
        })
      })
      // A refused SUBACK rejects with the packet; a granted one must say QoS 0..2.
      const granted = await client
        .subscribeAsync(RESPONSE_TOPIC, { qos: 1 })
        .catch((err: unknown) => ((err as { packet?: unknown }).packet ? [] : Promise.reject(err)))
      if (granted[0] === undefined || granted[0].qos > 2) {
        throw new BrokerAdminError(
          'ERR_BROKER_ADMIN_AUTH',
          `'${opts.username}' may not read ${RESPONSE_TOPIC}`,
          {
            remedy: 'give the admin the dynsec admin role (mosquitto_ctrl dynsec init)',
          },
        )
      }
    } catch (err) {
      client.end(true)
      if (err instanceof SpiffeEdgeError) throw err
      throw connectError(err, opts.url, opts.username)
    }
    return new DynSecClient(client, opts)
  }

  get connected(): boolean {
    return this.#mqtt.connected
  }

  /** Runs a batch; resolves with one result per command or rejects with the first command error. */
  async run(commands: readonly DynSecCommand[]): Promise<DynSecResult[]> {
    if (this.#closed) {
      throw new BrokerAdminError('ERR_BROKER_ADMIN', 'the dynsec admin client is closed', {
        remedy: 'this is a bug in the caller: it used the client after close()',
      })
    }
    if (commands.length === 0) return []
    if (commands.length > MAX_COMMANDS_PER_BATCH || this.#pending.size >= MAX_IN_FLIGHT) {
      throw new BrokerAdminError('ERR_BROKER_ADMIN', 'too many dynsec commands in flight', {
        remedy: 'retry later; the broker is answering slower than commands arrive',
      })
    }
    const deadline = Date.now() + this.#timeoutMs
    await this.#waitConnected(deadline)
    const batch = randomBytes(12).toString('hex')
    const ids = commands.map((_, i) => `${batch}.${i}`)
    const names = commands.map((c) => c.command)
    const body = JSON.stringify({
      commands: commands.map((c, i) => ({ ...c, correlationData: ids[i] })),
    })
    return new Promise<DynSecResult[]>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.#pending.delete(batch)
          reject(
            new BrokerAdminError(
              'ERR_BROKER_ADMIN_UNREACHABLE',
              `no dynsec answer to ${names.join(',')} within ${this.#timeoutMs} ms`,
              {
                remedy:
                  'check that the broker runs with the dynamic security plugin and that the response fits maxResponseBytes',
              },
            ),
          )
        },
        Math.max(1, deadline - Date.now()),
      )
      this.#pending.set(batch, {
        ids,
        commands: names,
        resolve: (r) => {
          clearTimeout(timer)
          resolve(r)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      })
      this.#mqtt.publish(REQUEST_TOPIC, body, { qos: 0 }, (err) => {
        if (err) this.#settle(batch, undefined, err)
      })
    })
  }

  async #waitConnected(deadline: number): Promise<void> {
    while (!this.#mqtt.connected) {
      if (this.#closed || Date.now() >= deadline) {
        if (!this.#closed && this.#lastError !== undefined) throw this.#lastError
        throw new BrokerAdminError(
          'ERR_BROKER_ADMIN_UNREACHABLE',
          `not connected to ${this.#url}`,
          {
            remedy: 'check that the broker runs; the client reconnects by itself',
          },
        )
      }
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  #settle(batch: string, results: DynSecResult[] | undefined, err?: unknown): void {
    const p = this.#pending.get(batch)
    if (p === undefined) return
    this.#pending.delete(batch)
    if (err !== undefined) p.reject(err)
    else p.resolve(results ?? [])
  }

  #onResponse(payload: Buffer): void {
    if (payload.length > this.#maxResponseBytes) return
    let responses: RawResponse[]
    try {
      const parsed = JSON.parse(payload.toString('utf8')) as { responses?: unknown }
      if (!Array.isArray(parsed.responses)) return
      responses = parsed.responses as RawResponse[]
    } catch {
      return
    }
    const first = responses[0]?.correlationData
    if (typeof first !== 'string') return
    const batch = first.slice(0, first.indexOf('.'))
    const p = this.#pending.get(batch)
    if (p === undefined) return
    if (responses.length !== p.ids.length) {
      this.#settle(
        batch,
        undefined,
        this.#protocolError('the reply has the wrong number of results'),
      )
      return
    }
    const results: DynSecResult[] = []
    for (let i = 0; i < responses.length; i++) {
      const r = responses[i]!
      if (r.correlationData !== p.ids[i] || r.command !== p.commands[i]) {
        this.#settle(batch, undefined, this.#protocolError('the reply does not match the request'))
        return
      }
      if (r.error !== undefined) {
        const text = String(r.error).slice(0, 200)
        const command = p.commands[i]!
        this.#settle(
          batch,
          undefined,
          new BrokerAdminError('ERR_BROKER_ADMIN', `dynsec ${command} failed: ${text}`, {
            brokerError: text,
            command,
            remedy: 'see the broker log; the dynsec state may have been changed by hand',
          }),
        )
        return
      }
      results.push(
        r.data === undefined
          ? { command: p.commands[i]! }
          : { command: p.commands[i]!, data: r.data },
      )
    }
    this.#settle(batch, results)
  }

  #protocolError(why: string): BrokerAdminError {
    return new BrokerAdminError('ERR_BROKER_ADMIN', `dynsec protocol error: ${why}`, {
      remedy: 'check that the broker is Mosquitto 2 with the dynamic security plugin',
    })
  }

  async #one(command: DynSecCommand): Promise<DynSecResult> {
    const [r] = await this.run([command])
    return r!
  }

  async createClient(c: {
    username: string
    password: string
    clientid?: string
    textname?: string
    roles?: readonly { rolename: string; priority?: number }[]
  }): Promise<void> {
    await this.#one({ command: 'createClient', ...c })
  }

  async deleteClient(username: string): Promise<void> {
    await this.#one({ command: 'deleteClient', username })
  }

  /** The broker also disconnects the client's current connection (Mosquitto 2.0). */
  async setClientPassword(username: string, password: string): Promise<void> {
    await this.#one({ command: 'setClientPassword', username, password })
  }

  async addClientRole(username: string, rolename: string, priority = 0): Promise<void> {
    await this.#one({ command: 'addClientRole', username, rolename, priority })
  }

  async removeClientRole(username: string, rolename: string): Promise<void> {
    await this.#one({ command: 'removeClientRole', username, rolename })
  }

  /** The client, or undefined when the broker has none by that name. */
  async getClient(username: string): Promise<DynSecClientInfo | undefined> {
    try {
      const r = await this.#one({ command: 'getClient', username })
      return parseClientInfo(r.data)
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
  }

  /** One page of user names (count bounded so the reply stays small). */
  async listClients(offset = 0, count = 1000): Promise<{ totalCount: number; clients: string[] }> {
    const r = await this.#one({ command: 'listClients', verbose: false, offset, count })
    const d = r.data as { totalCount?: unknown; clients?: unknown } | undefined
    if (typeof d?.totalCount !== 'number' || !Array.isArray(d.clients)) {
      throw this.#protocolError('listClients returned no list')
    }
    return { totalCount: d.totalCount, clients: d.clients.filter((c) => typeof c === 'string') }
  }

  async createRole(rolename: string, acls: readonly DynSecAcl[] = []): Promise<void> {
    await this.#one({ command: 'createRole', rolename, acls })
  }

  async deleteRole(rolename: string): Promise<void> {
    await this.#one({ command: 'deleteRole', rolename })
  }

  async getRole(rolename: string): Promise<DynSecRoleInfo | undefined> {
    try {
      const r = await this.#one({ command: 'getRole', rolename })
      return parseRoleInfo(r.data)
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
  }

  async addRoleACL(rolename: string, acl: DynSecAcl): Promise<void> {
    await this.#one({ command: 'addRoleACL', rolename, ...acl })
  }

  async removeRoleACL(rolename: string, acl: Pick<DynSecAcl, 'acltype' | 'topic'>): Promise<void> {
    await this.#one({ command: 'removeRoleACL', rolename, acltype: acl.acltype, topic: acl.topic })
  }

  async getDefaultACLAccess(): Promise<DynSecDefaultAcl> {
    const r = await this.#one({ command: 'getDefaultACLAccess' })
    return parseDefaultAcl(r.data)
  }

  async setDefaultACLAccess(acls: DynSecDefaultAcl): Promise<void> {
    await this.#one({
      command: 'setDefaultACLAccess',
      acls: Object.entries(acls).map(([acltype, allow]) => ({ acltype, allow })),
    })
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const batch of [...this.#pending.keys()]) {
      this.#settle(
        batch,
        undefined,
        new BrokerAdminError('ERR_BROKER_ADMIN', 'the dynsec admin client was closed', {
          remedy: 'retry on a new connection',
        }),
      )
    }
    await this.#mqtt.endAsync()
  }
}
