/**
 * Shapes of the dynamic security plugin's data, and checks on what the broker sends back: the
 * broker is not trusted to send well-formed JSON, so replies are validated before use.
 */
import { SpiffeEdgeError } from '../../errors.js'

export type DynSecAclType =
  | 'publishClientSend'
  | 'publishClientReceive'
  | 'subscribeLiteral'
  | 'subscribePattern'
  | 'unsubscribeLiteral'
  | 'unsubscribePattern'

export interface DynSecAcl {
  readonly acltype: DynSecAclType
  readonly topic: string
  readonly allow: boolean
  /** Higher runs first (Mosquitto): a deny at priority 10 overrides an allow at 0. */
  readonly priority?: number
}

export interface DynSecClientInfo {
  readonly username: string
  readonly clientid?: string
  readonly textname?: string
  readonly disabled?: boolean
  readonly roles: readonly { rolename: string; priority?: number }[]
  readonly groups: readonly { groupname: string }[]
}

export interface DynSecRoleInfo {
  readonly rolename: string
  readonly acls: readonly DynSecAcl[]
}

export interface DynSecDefaultAcl {
  readonly publishClientSend: boolean
  readonly publishClientReceive: boolean
  readonly subscribe: boolean
  readonly unsubscribe: boolean
}

const ACL_TYPES: ReadonlySet<string> = new Set<DynSecAclType>([
  'publishClientSend',
  'publishClientReceive',
  'subscribeLiteral',
  'subscribePattern',
  'unsubscribeLiteral',
  'unsubscribePattern',
])

function bad(what: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_BROKER_ADMIN', `dynsec protocol error: malformed ${what}`, {
    remedy: 'check that the broker is Mosquitto 2 with the dynamic security plugin',
  })
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

export function parseClientInfo(data: unknown): DynSecClientInfo {
  const c = isObject(data) ? data.client : undefined
  if (!isObject(c) || typeof c.username !== 'string') throw bad('getClient reply')
  const roles = Array.isArray(c.roles) ? c.roles : []
  const groups = Array.isArray(c.groups) ? c.groups : []
  return {
    username: c.username,
    ...(typeof c.clientid === 'string' ? { clientid: c.clientid } : {}),
    ...(typeof c.textname === 'string' ? { textname: c.textname } : {}),
    ...(typeof c.disabled === 'boolean' ? { disabled: c.disabled } : {}),
    roles: roles.map((r) => {
      if (!isObject(r) || typeof r.rolename !== 'string') throw bad('client role')
      return typeof r.priority === 'number'
        ? { rolename: r.rolename, priority: r.priority }
        : { rolename: r.rolename }
    }),
    groups: groups.map((g) => {
      if (!isObject(g) || typeof g.groupname !== 'string') throw bad('client group')
      return { groupname: g.groupname }
    }),
  }
}

export function parseRoleInfo(data: unknown): DynSecRoleInfo {
  const r = isObject(data) ? data.role : undefined
  if (!isObject(r) || typeof r.rolename !== 'string') throw bad('getRole reply')
  const acls = Array.isArray(r.acls) ? r.acls : []
  return {
    rolename: r.rolename,
    acls: acls.map((a) => {
      if (
        !isObject(a) ||
        typeof a.acltype !== 'string' ||
        !ACL_TYPES.has(a.acltype) ||
        typeof a.topic !== 'string' ||
        typeof a.allow !== 'boolean'
      ) {
        throw bad('role ACL')
      }
      return {
        acltype: a.acltype as DynSecAclType,
        topic: a.topic,
        allow: a.allow,
        priority: typeof a.priority === 'number' ? a.priority : 0,
      }
    }),
  }
}

export function parseDefaultAcl(data: unknown): DynSecDefaultAcl {
  const list = isObject(data) && Array.isArray(data.acls) ? data.acls : undefined
  if (list === undefined) throw bad('getDefaultACLAccess reply')
  const get = (name: string): boolean => {
    const a = list.find((x) => isObject(x) && x.acltype === name) as
      | Record<string, unknown>
      | undefined
    if (a === undefined || typeof a.allow !== 'boolean') throw bad(`default ACL ${name}`)
    return a.allow
  }
  return {
    publishClientSend: get('publishClientSend'),
    publishClientReceive: get('publishClientReceive'),
    subscribe: get('subscribe'),
    unsubscribe: get('unsubscribe'),
  }
}
