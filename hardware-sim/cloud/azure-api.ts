/**
 * The simulated Azure APIs the azure_msi server may call for its Resource Manager selectors, as
 * they are on the wire, on the IMDS port:
 *  - the AAD v2 token endpoint (POST /<tenant>/oauth2/v2.0/token, client-credentials grant): the
 *    tenant, the app's client ID and secret (compared in constant time) and the Resource Manager
 *    .default scope are checked; AAD's error JSON (error, error_description with its AADSTS
 *    code, error_codes) and statuses (400, 401 invalid_client) otherwise;
 *  - Resource Manager GET virtualMachines/<vm> and networkInterfaces/<nic> with a bearer token
 *    from that endpoint or from IMDS for https://management.azure.com/; api-version required;
 *    ARM's {error: {code, message}} answers (400 MissingApiVersionParameter, 401
 *    AuthenticationFailed / InvalidAuthenticationToken, 404 ResourceNotFound).
 *  - Resources - List (GET /subscriptions/<s>/resources, $filter resourceType eq only, paged by
 *    nextLink with a $skiptoken): the VM and `otherVms`, each with its identity block.
 * Test faults (identity armFault): 'oversize' pads the VM answer past 1 MiB, 'slow' delays it.
 */
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { readBody } from './gcp-api.js'

export interface AzureApiIdentity {
  readonly tenantId: string
  readonly principalId: string
  readonly subscriptionId: string
  readonly resourceGroup: string
  readonly vmName: string
  readonly networkResourceGroup: string
  readonly networkSecurityGroup: string
  readonly virtualNetwork: string
  readonly subnet: string
  /** The app registration the server signs in as. */
  readonly azureApi: { readonly clientId: string; readonly clientSecret: string }
  readonly armFault?: 'oversize' | 'slow'
  readonly userAssigned?: {
    readonly resourceGroup: string
    readonly name: string
    readonly principalId: string
    readonly clientId: string
  }
  readonly systemAssigned?: boolean
  readonly otherVms?: { readonly count: number; readonly shared?: number }
}

export const ARM_RESOURCE = 'https://management.azure.com/'
const VM_TYPE = 'Microsoft.Compute/virtualMachines'
/** Resources - List's page size here (ARM's own is up to 1000): small, so paging is exercised. */
const PAGE = 100

function json(res: ServerResponse, status: number, o: unknown) {
  const body = JSON.stringify(o)
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  })
  res.end(body)
}

const armError = (res: ServerResponse, status: number, code: string, message: string) =>
  json(res, status, { error: { code, message } })

const same = (a: string, b: string) => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

/** Which identity IMDS issues for: IMDS's own selection rules and error texts. */
export function imdsIdentity(
  id: AzureApiIdentity,
  q: URLSearchParams,
): string | { principalId: string; clientId: string; mirid: string } {
  const system = {
    principalId: id.principalId,
    clientId: id.principalId,
    mirid: `/subscriptions/${id.subscriptionId}/resourcegroups/${id.resourceGroup}/providers/Microsoft.Compute/virtualMachines/${id.vmName}`,
  }
  const u = id.userAssigned
  const user = u && {
    principalId: u.principalId,
    clientId: u.clientId,
    mirid: `/subscriptions/${id.subscriptionId}/resourcegroups/${u.resourceGroup}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/${u.name}`,
  }
  const asked = q.get('client_id') ?? q.get('object_id') ?? q.get('msi_res_id')
  if (asked !== null) {
    const hit =
      user &&
      [user.clientId, user.principalId, user.mirid].some(
        (v) => v.toLowerCase() === asked.toLowerCase(),
      )
    return hit ? user : 'Identity not found'
  }
  if (id.systemAssigned !== false) return system
  return user ?? 'Identity not found'
}

/** Routes AAD and ARM paths; `register` records an IMDS-issued Resource Manager token. */
export function azureApiHandler(id: AzureApiIdentity) {
  const tokens = new Map<string, number>()
  const register = (token: string, expiresAt: number) => {
    if (tokens.size > 10_000) tokens.clear()
    tokens.set(token, expiresAt)
  }

  const aad = async (req: IncomingMessage, res: ServerResponse, tenant: string) => {
    const stamp = () => ({
      timestamp: `${new Date().toISOString().replace('T', ' ').slice(0, 19)}Z`,
      trace_id: randomUUID(),
      correlation_id: randomUUID(),
    })
    const fail = (status: number, error: string, code: number, text: string) =>
      json(res, status, {
        error,
        error_description: `AADSTS${code}: ${text}`,
        error_codes: [code],
        ...stamp(),
      })
    if (req.method !== 'POST')
      return fail(400, 'invalid_request', 900561, 'The endpoint only accepts POST requests.')
    const body = await readBody(req)
    if (body === undefined) return fail(400, 'invalid_request', 90004, 'Request too large.')
    if (tenant.toLowerCase() !== id.tenantId.toLowerCase())
      return fail(400, 'invalid_tenant', 90002, `Tenant '${tenant}' not found.`)
    const form = new URLSearchParams(body)
    if (form.get('grant_type') !== 'client_credentials')
      return fail(
        400,
        'unsupported_grant_type',
        70003,
        'The app requested an unsupported grant type.',
      )
    const clientId = form.get('client_id') ?? ''
    if (clientId !== id.azureApi.clientId)
      return fail(
        400,
        'unauthorized_client',
        700016,
        `Application with identifier '${clientId}' was not found in the directory.`,
      )
    if (!same(form.get('client_secret') ?? '', id.azureApi.clientSecret))
      return fail(
        401,
        'invalid_client',
        7000215,
        `Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${clientId}'.`,
      )
    if (form.get('scope') !== `${ARM_RESOURCE}.default`)
      return fail(
        400,
        'invalid_scope',
        1002012,
        `The provided value for scope ${form.get('scope')} is not valid.`,
      )
    const t = `eyJ0eXAiOiJKV1QiLCJzaW0iOnRydWV9.${randomBytes(48).toString('base64url')}`
    register(t, Date.now() + 3600_000)
    return json(res, 200, {
      token_type: 'Bearer',
      expires_in: 3599,
      ext_expires_in: 3599,
      access_token: t,
    })
  }

  const vmId = `/subscriptions/${id.subscriptionId}/resourceGroups/${id.resourceGroup}/providers/Microsoft.Compute/virtualMachines/${id.vmName}`
  const nicName = `${id.vmName}-nic0`
  const nicId = `/subscriptions/${id.subscriptionId}/resourceGroups/${id.resourceGroup}/providers/Microsoft.Network/networkInterfaces/${nicName}`
  const net = `/subscriptions/${id.subscriptionId}/resourceGroups/${id.networkResourceGroup}/providers/Microsoft.Network`

  const uaiId = id.userAssigned
    ? `/subscriptions/${id.subscriptionId}/resourceGroups/${id.userAssigned.resourceGroup}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/${id.userAssigned.name}`
    : undefined
  // ARM's identity block: type, the system principal, the user-assigned ones keyed by their ID.
  const vmIdentity = (withUser: boolean, system = id.systemAssigned !== false) => {
    const user = withUser && id.userAssigned && uaiId
    if (!system && !user) return undefined
    return {
      type: [system && 'SystemAssigned', user && 'UserAssigned'].filter(Boolean).join(', '),
      ...(system ? { principalId: id.principalId, tenantId: id.tenantId } : {}),
      ...(user
        ? {
            userAssignedIdentities: {
              [uaiId]: {
                principalId: id.userAssigned!.principalId,
                clientId: id.userAssigned!.clientId,
              },
            },
          }
        : {}),
    }
  }
  // The subscription's VMs as Resources - List pages them: ours, then otherVms (the first
  // `shared` of them carry our user-assigned identity too), PAGE per page with a $skiptoken.
  const listed = () => {
    const all: Record<string, unknown>[] = [
      {
        id: vmId,
        name: id.vmName,
        type: VM_TYPE,
        location: 'westeurope',
        identity: vmIdentity(true),
      },
    ]
    for (let i = 0; i < (id.otherVms?.count ?? 0); i++) {
      const name = `${id.vmName}-peer${i}`
      const ident = i < (id.otherVms?.shared ?? 0) ? vmIdentity(true, false) : undefined
      all.push({
        id: `/subscriptions/${id.subscriptionId}/resourceGroups/fleet/providers/Microsoft.Compute/virtualMachines/${name}`,
        name,
        type: VM_TYPE,
        location: 'westeurope',
        ...(ident ? { identity: ident } : {}),
      })
    }
    return all
  }
  const list = (req: IncomingMessage, res: ServerResponse, url: URL) => {
    const filter = url.searchParams.get('$filter')
    const want = filter === null ? null : /^resourceType eq '([^']+)'$/i.exec(filter.trim())
    if (filter !== null && !want)
      return armError(
        res,
        400,
        'InvalidFilterInQueryString',
        `Invalid $filter '${filter}' specified in the query string.`,
      )
    const items = want && want[1]!.toLowerCase() !== VM_TYPE.toLowerCase() ? [] : listed()
    const skip = Number(url.searchParams.get('$skiptoken') ?? '0') || 0
    const page = items.slice(skip, skip + PAGE)
    const body: Record<string, unknown> = { value: page }
    if (skip + PAGE < items.length) {
      const next = new URL(url.pathname, `http://${req.headers.host}`)
      for (const [k, v] of url.searchParams) if (k !== '$skiptoken') next.searchParams.set(k, v)
      next.searchParams.set('$skiptoken', String(skip + PAGE))
      body.nextLink = next.toString()
    }
    return json(res, 200, body)
  }

  const vm = async (res: ServerResponse) => {
    if (id.armFault === 'slow') await sleep(5000)
    const body: Record<string, unknown> = {
      name: id.vmName,
      id: vmId,
      type: 'Microsoft.Compute/virtualMachines',
      location: 'westeurope',
      identity: vmIdentity(true),
      properties: {
        vmId: randomUUID(),
        hardwareProfile: { vmSize: 'Standard_B1s' },
        networkProfile: { networkInterfaces: [{ id: nicId, properties: { primary: true } }] },
        provisioningState: 'Succeeded',
      },
    }
    // An answer past the server's 1 MiB cap (ARM's tags are bounded; a broken proxy is not).
    if (id.armFault === 'oversize')
      body.tags = Object.fromEntries(
        Array.from({ length: 1200 }, (_, i) => [`t${i}`, 'x'.repeat(1000)]),
      )
    return json(res, 200, body)
  }

  const nic = (res: ServerResponse) =>
    json(res, 200, {
      name: nicName,
      id: nicId,
      type: 'Microsoft.Network/networkInterfaces',
      location: 'westeurope',
      properties: {
        provisioningState: 'Succeeded',
        ipConfigurations: [
          {
            name: 'ipconfig1',
            id: `${nicId}/ipConfigurations/ipconfig1`,
            properties: {
              privateIPAddress: '10.0.0.4',
              privateIPAllocationMethod: 'Dynamic',
              subnet: {
                id: `${net}/virtualNetworks/${id.virtualNetwork}/subnets/${id.subnet}`,
              },
              primary: true,
            },
          },
        ],
        networkSecurityGroup: { id: `${net}/networkSecurityGroups/${id.networkSecurityGroup}` },
        virtualMachine: { id: vmId },
      },
    })

  const arm = (req: IncomingMessage, res: ServerResponse, url: URL) => {
    if (!url.searchParams.get('api-version'))
      return armError(
        res,
        400,
        'MissingApiVersionParameter',
        'The api-version query parameter (?api-version=) is required for all requests.',
      )
    const auth = String(req.headers.authorization ?? '')
    if (!auth.startsWith('Bearer '))
      return armError(
        res,
        401,
        'AuthenticationFailed',
        "Authentication failed. The 'Authorization' header is missing.",
      )
    const exp = tokens.get(auth.slice('Bearer '.length))
    if (exp === undefined || exp < Date.now())
      return armError(res, 401, 'InvalidAuthenticationToken', 'The access token is invalid.')
    if (req.method !== 'GET')
      return armError(res, 405, 'MethodNotAllowed', 'The requested method is not allowed.')
    // Resource group and resource names are case-insensitive in ARM.
    const path = decodeURIComponent(url.pathname).toLowerCase()
    if (path === `/subscriptions/${id.subscriptionId}/resources`.toLowerCase())
      return list(req, res, url)
    if (path === vmId.toLowerCase()) return vm(res)
    if (path === nicId.toLowerCase()) return nic(res)
    const m = /\/resourcegroups\/([^/]+)\/providers\/([^/]+\/[^/]+)\/([^/]+)$/.exec(path)
    return armError(
      res,
      404,
      'ResourceNotFound',
      `The Resource '${m?.[2] ?? 'resource'}/${m?.[3] ?? ''}' under resource group '${m?.[1] ?? ''}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix`,
    )
  }

  const handle = (
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
  ): Promise<void> | void | false => {
    const t = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(url.pathname)
    if (t) return aad(req, res, decodeURIComponent(t[1]!))
    if (url.pathname.startsWith('/subscriptions/')) return arm(req, res, url)
    return false
  }
  return { handle, register }
}
