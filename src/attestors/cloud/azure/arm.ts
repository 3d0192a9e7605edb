/**
 * The azure_msi server's optional Resource Manager lookup (SPIRE's per-tenant credentials): an
 * access token for Resource Manager, either by the client-credentials grant of an app
 * registration (app_id / app_secret, sent to the tenant's AAD token endpoint) or from the
 * server's own managed identity (use_msi, IMDS), then the VM the token's xms_mirid names and its
 * network interfaces. From their answers come SPIRE's network-security-group:, virtual-network:
 * and virtual-network-subnet: selectors. A user-assigned identity's token names the identity, not
 * a VM: as SPIRE does, the VM is found by listing the subscription's VMs (bounded) and keeping
 * the one that carries that identity with the token's principal; none or several refuse. No Azure SDK: three kinds of JSON GET and one token
 * call are all it takes; the SDK would bring @azure/identity (with MSAL), @azure/arm-compute,
 * @azure/arm-network and their core packages, and its own retry and timeout rules to bound.
 */
import type { Selector } from '../../types.js'
import {
  type AccessToken,
  accessTokenOf,
  apiCall,
  apiFailure,
  TokenCache,
  tokenUntil,
} from '../api.js'
import { CloudAttestationError } from '../common.js'
import { AZURE_MSI } from './protocol.js'

export const DEFAULT_AUTHORITY = 'https://login.microsoftonline.com'
export const DEFAULT_RESOURCE_MANAGER = 'https://management.azure.com'
export const DEFAULT_MSI_ENDPOINT = 'http://169.254.169.254'
/** The audience Resource Manager tokens carry (public cloud). */
const ARM_RESOURCE = 'https://management.azure.com/'
const VM_API_VERSION = '2024-07-01'
const NIC_API_VERSION = '2024-05-01'
const MSI_API_VERSION = '2018-02-01'
const RESOURCES_API_VERSION = '2021-04-01'
/** The VM list for a user-assigned identity: bounded in pages, resources and time. */
export const MAX_LIST_PAGES = 20
export const MAX_LISTED = 2000
const LIST_DEADLINE_FACTOR = 4
/** Azure allows a few NICs per VM (8 on most sizes) and IP configurations per NIC (256). */
const MAX_NICS = 16
const MAX_IP_CONFIGS = 256

export type AzureCredential =
  | { readonly kind: 'secret'; readonly appId: string; readonly appSecret: string }
  | { readonly kind: 'msi' }

export interface AzureApiConfig {
  readonly tenant: string
  readonly credential: AzureCredential
  /** SPIRE's subscription_id: when set, VMs in other subscriptions are refused. */
  readonly subscriptionId?: string
  readonly authority: string
  readonly resourceManager: string
  readonly msiEndpoint: string
  readonly timeoutMs: number
}

// No ':' in a name: selectors join resource group and names with ':' as SPIRE does (unescaped),
// so a group 'a:b' with NSG 'c' would read as group 'a' with NSG 'b:c'. Azure allows ':' in none
// of these names, so an ID holding one is refused as malformed rather than escaped (escaping
// would change the selector strings SPIRE users' entries hold).
const SEG = '([^/?#:]{1,128})'
const SUB = '([0-9a-fA-F-]{36})'
const rx = (tail: string) =>
  new RegExp(`^/subscriptions/${SUB}/resourceGroups/${SEG}/providers/${tail}$`, 'i')
export const VM_ID = rx(`Microsoft\\.Compute/virtualMachines/${SEG}`)
export const UAI_ID = rx(`Microsoft\\.ManagedIdentity/userAssignedIdentities/${SEG}`)
const NIC_ID = rx(`Microsoft\\.Network/networkInterfaces/${SEG}`)
const NSG_ID = rx(`Microsoft\\.Network/networkSecurityGroups/${SEG}`)
const SUBNET_ID = rx(`Microsoft\\.Network/virtualNetworks/${SEG}/subnets/${SEG}`)

export function describeAzureApi(cfg: AzureApiConfig): string {
  const how =
    cfg.credential.kind === 'secret'
      ? `app ${cfg.credential.appId} via ${cfg.authority}`
      : `the server's managed identity via ${cfg.msiEndpoint}`
  return `tenant ${cfg.tenant}: ${how}, Resource Manager at ${cfg.resourceManager}`
}

interface Identity {
  principalId?: unknown
  userAssignedIdentities?: unknown
}

interface VirtualMachine {
  identity?: Identity
  properties?: { networkProfile?: { networkInterfaces?: unknown } }
}

interface NetworkInterface {
  properties?: {
    networkSecurityGroup?: { id?: unknown }
    ipConfigurations?: unknown
  }
}

/** ARM's and AAD's error shapes: {error: {code, message}} and {error, error_description}. */
function errorText(json: unknown, text: string): string {
  const e = (json as { error?: unknown; error_description?: unknown } | undefined)?.error
  if (typeof e === 'object' && e !== null) {
    const { code, message } = e as { code?: unknown; message?: unknown }
    return `${String(code)}: ${String(message)}`.slice(0, 300)
  }
  if (typeof e === 'string') {
    const d = (json as { error_description?: unknown }).error_description
    return `${e}: ${String(d ?? '')}`.slice(0, 300)
  }
  return text.slice(0, 200)
}

export class AzureApi {
  readonly cfg: AzureApiConfig
  private readonly tokens: TokenCache

  constructor(cfg: AzureApiConfig) {
    this.cfg = cfg
    this.tokens = new TokenCache((now) => this.exchange(now))
  }

  private async exchange(now: number): Promise<AccessToken> {
    const c = this.cfg
    let what: string
    let r: Awaited<ReturnType<typeof apiCall>>
    if (c.credential.kind === 'secret') {
      const url = `${c.authority}/${encodeURIComponent(c.tenant)}/oauth2/v2.0/token`
      what = `AAD client-credentials token for app ${c.credential.appId} at ${url}`
      r = await apiCall(
        AZURE_MSI,
        what,
        url,
        {
          method: 'POST',
          headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({
            grant_type: 'client_credentials',
            client_id: c.credential.appId,
            client_secret: c.credential.appSecret,
            scope: `${ARM_RESOURCE}.default`,
          }).toString(),
        },
        c.timeoutMs,
      )
    } else {
      const q = new URLSearchParams({ 'api-version': MSI_API_VERSION, resource: ARM_RESOURCE })
      const url = `${c.msiEndpoint}/metadata/identity/oauth2/token?${q}`
      what = `managed identity token from ${c.msiEndpoint}`
      r = await apiCall(AZURE_MSI, what, url, { headers: { Metadata: 'true' } }, c.timeoutMs)
    }
    if (r.status !== 200)
      throw apiFailure(AZURE_MSI, what, `HTTP ${r.status}: ${errorText(r.json, r.text)}`)
    const value = accessTokenOf(r.json)
    if (!value) throw apiFailure(AZURE_MSI, what, 'the answer has no access_token')
    // AAD answers expires_in as a number, IMDS as a string of digits; both are seconds.
    const until = tokenUntil(now, (r.json as { expires_in?: unknown }).expires_in, 24 * 3600)
    return { value, until }
  }

  /** A Resource Manager GET with the bearer token; one fresh token if a cached one is refused. */
  private async get(what: string, path: string, apiVersion: string, now: number) {
    return this.fetchJson(what, `${this.cfg.resourceManager}${path}?api-version=${apiVersion}`, now)
  }

  /** A GET of a full Resource Manager URL (a list's nextLink); the caller checks its origin. */
  async fetchJson(what: string, url: string, now: number) {
    let used = ''
    const once = async () => {
      used = await this.tokens.get(now)
      return apiCall(
        AZURE_MSI,
        what,
        url,
        { headers: { Authorization: `Bearer ${used}`, Accept: 'application/json' } },
        this.cfg.timeoutMs,
      )
    }
    const cached = this.tokens.cached
    let r = await once()
    if (r.status === 401) {
      this.tokens.drop(used)
      if (cached) r = await once()
    }
    if (r.status === 404)
      throw new CloudAttestationError(
        AZURE_MSI,
        'instance',
        `${what}: Resource Manager knows no such resource (${errorText(r.json, r.text)})`,
      )
    if (r.status !== 200)
      throw apiFailure(AZURE_MSI, what, `HTTP ${r.status}: ${errorText(r.json, r.text)}`)
    if (typeof r.json !== 'object' || r.json === null)
      throw apiFailure(AZURE_MSI, what, 'the answer is not a JSON object')
    return r.json
  }

  /** The one VM carrying user-assigned identity `uaiId` with `principal` (see findVmOf). */
  findVm(uaiId: string, principal: string, now: number): Promise<string> {
    return findVmOf(this, uaiId, principal, now)
  }

  /**
   * SPIRE's Resource Manager selectors for the VM `vmId` names (from the signed token), whose
   * system-assigned identity must be `principal` (a VM deleted and recreated under the same name
   * has another identity: its successor's network is not evidence about this token). With
   * `uaiId`, the VM must carry that user-assigned identity with principal `principal`.
   */
  async selectors(
    vmId: string,
    principal: string,
    now: number,
    uaiId?: string,
  ): Promise<Selector[]> {
    const m = VM_ID.exec(vmId)
    if (!m) throw new CloudAttestationError(AZURE_MSI, 'claims', `xms_mirid ${vmId} is not a VM`)
    const [sub, rg, name] = [m[1]!, m[2]!, m[3]!]
    if (this.cfg.subscriptionId && sub.toLowerCase() !== this.cfg.subscriptionId.toLowerCase())
      throw new CloudAttestationError(
        AZURE_MSI,
        'instance',
        `the VM is in subscription ${sub}, not the tenant's subscription_id ${this.cfg.subscriptionId}`,
      )
    const path = `/subscriptions/${sub}/resourceGroups/${encodeURIComponent(rg)}/providers/Microsoft.Compute/virtualMachines/${encodeURIComponent(name)}`
    const what = `Resource Manager virtualMachines.get ${rg}/${name}`
    const vm = (await this.get(what, path, VM_API_VERSION, now)) as VirtualMachine
    const owner = uaiId ? userAssigned(vm.identity, uaiId) : vm.identity?.principalId
    if (typeof owner !== 'string' || owner.toLowerCase() !== principal.toLowerCase())
      throw new CloudAttestationError(
        AZURE_MSI,
        'instance',
        `${what}: the VM's ${uaiId ? `user-assigned identity ${uaiId}` : 'identity'} is ${JSON.stringify(owner ?? null)}, the token's is ${principal} (deleted and recreated, or detached?)`,
      )
    const refs = vm.properties?.networkProfile?.networkInterfaces
    const nics = Array.isArray(refs) ? refs : []
    if (nics.length > MAX_NICS)
      throw apiFailure(AZURE_MSI, what, `${nics.length} network interfaces, over ${MAX_NICS}`)
    const values = new Set<string>()
    for (const ref of nics) {
      const id = (ref as { id?: unknown } | null)?.id
      if (typeof id !== 'string') continue
      const n = NIC_ID.exec(id)
      if (!n)
        throw apiFailure(AZURE_MSI, what, `network interface ID ${id.slice(0, 200)} is malformed`)
      const nicWhat = `Resource Manager networkInterfaces.get ${n[2]}/${n[3]}`
      const nicPath = `/subscriptions/${n[1]}/resourceGroups/${encodeURIComponent(n[2]!)}/providers/Microsoft.Network/networkInterfaces/${encodeURIComponent(n[3]!)}`
      const nic = (await this.get(nicWhat, nicPath, NIC_API_VERSION, now)) as NetworkInterface
      for (const v of nicSelectors(nicWhat, nic)) values.add(v)
    }
    return [...values].sort().map((value) => ({ type: AZURE_MSI, value }))
  }
}

/**
 * The ID of the one VM in the subscription that carries user-assigned identity `uaiId` with
 * principal `principal` (the token names only the identity). SPIRE lists resources filtered by
 * principal; we list the subscription's VMs and match locally, since the server-side filter is
 * not documented to cover user-assigned identities, and a filter is not evidence anyway.
 */
async function findVmOf(
  api: AzureApi,
  uaiId: string,
  principal: string,
  now: number,
): Promise<string> {
  const u = UAI_ID.exec(uaiId)
  if (!u)
    throw new CloudAttestationError(AZURE_MSI, 'claims', `${uaiId} is not a user-assigned identity`)
  const sub = api.cfg.subscriptionId ?? u[1]!
  const q = new URLSearchParams({
    $filter: "resourceType eq 'Microsoft.Compute/virtualMachines'",
    'api-version': RESOURCES_API_VERSION,
  })
  const what = `Resource Manager resources.list (VMs of subscription ${sub}) for identity ${u[3]}`
  const base = new URL(api.cfg.resourceManager)
  const deadline = Date.now() + api.cfg.timeoutMs * LIST_DEADLINE_FACTOR
  let url: string | undefined = `${api.cfg.resourceManager}/subscriptions/${sub}/resources?${q}`
  // By lower-cased ID: ARM IDs are case-insensitive, and a VM listed twice is still one VM.
  const found = new Map<string, string>()
  let listed = 0
  for (let page = 0; url !== undefined; page++) {
    if (page >= MAX_LIST_PAGES)
      throw apiFailure(AZURE_MSI, what, `more than ${MAX_LIST_PAGES} pages; refused unresolved`)
    if (Date.now() > deadline)
      throw apiFailure(
        AZURE_MSI,
        what,
        `not done in ${api.cfg.timeoutMs * LIST_DEADLINE_FACTOR} ms`,
      )
    const body = (await api.fetchJson(what, url, now)) as { value?: unknown; nextLink?: unknown }
    const items = Array.isArray(body.value) ? body.value : []
    listed += items.length
    if (listed > MAX_LISTED)
      throw apiFailure(AZURE_MSI, what, `more than ${MAX_LISTED} VMs; refused unresolved`)
    for (const item of items) {
      const r = item as { id?: unknown; identity?: Identity } | null
      if (typeof r?.id !== 'string' || !VM_ID.test(r.id)) continue
      const p = userAssigned(r.identity, uaiId)
      if (typeof p === 'string' && p.toLowerCase() === principal.toLowerCase())
        found.set(r.id.toLowerCase(), r.id)
    }
    const next = body.nextLink
    url = undefined
    if (typeof next === 'string' && next !== '') {
      // The bearer token goes with the next page: only to the Resource Manager we were given.
      let n: URL
      try {
        n = new URL(next)
      } catch {
        throw apiFailure(AZURE_MSI, what, 'nextLink is not a URL')
      }
      if (n.origin !== base.origin)
        throw apiFailure(AZURE_MSI, what, `nextLink leaves ${base.origin}; refused`)
      url = n.toString()
    }
  }
  const ids = [...found.values()]
  if (ids.length === 0)
    throw new CloudAttestationError(
      AZURE_MSI,
      'instance',
      `${what}: no VM carries the identity with principal ${principal} (detached, or another subscription?)`,
    )
  if (ids.length > 1)
    throw new CloudAttestationError(
      AZURE_MSI,
      'instance',
      `${what}: ${ids.length} VMs carry the identity (${ids.slice(0, 3).join(', ')}); a shared user-assigned identity does not name one VM`,
    )
  return ids[0]!
}

/** The principal ID of user-assigned identity `uaiId` in an ARM identity block (IDs compare case-insensitively). */
function userAssigned(identity: Identity | undefined, uaiId: string): unknown {
  const map = identity?.userAssignedIdentities
  if (typeof map !== 'object' || map === null) return undefined
  const want = uaiId.toLowerCase()
  for (const [k, v] of Object.entries(map))
    if (k.toLowerCase() === want) return (v as { principalId?: unknown } | null)?.principalId
  return undefined
}

/** SPIRE's shapes: network-security-group:<rg>:<nsg>, virtual-network[-subnet]:<rg>:<vnet>[:<subnet>]. */
function nicSelectors(what: string, nic: NetworkInterface): string[] {
  const out: string[] = []
  const nsg = nic.properties?.networkSecurityGroup?.id
  if (typeof nsg === 'string') {
    const m = NSG_ID.exec(nsg)
    if (!m) throw apiFailure(AZURE_MSI, what, `security group ID ${nsg.slice(0, 200)} is malformed`)
    out.push(`network-security-group:${m[2]}:${m[3]}`)
  }
  const ipcs = nic.properties?.ipConfigurations
  const list = Array.isArray(ipcs) ? ipcs : []
  if (list.length > MAX_IP_CONFIGS)
    throw apiFailure(AZURE_MSI, what, `${list.length} IP configurations, over ${MAX_IP_CONFIGS}`)
  for (const ipc of list) {
    const subnet = (ipc as { properties?: { subnet?: { id?: unknown } } } | null)?.properties
      ?.subnet?.id
    if (typeof subnet !== 'string') continue
    const m = SUBNET_ID.exec(subnet)
    if (!m) throw apiFailure(AZURE_MSI, what, `subnet ID ${subnet.slice(0, 200)} is malformed`)
    out.push(`virtual-network:${m[2]}:${m[3]}`, `virtual-network-subnet:${m[2]}:${m[3]}:${m[4]}`)
  }
  return out
}
