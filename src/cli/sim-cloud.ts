/**
 * `sim cloud aws|gcp|azure start|stop`: a simulated instance-metadata service (hardware-sim/cloud)
 * for the cloud node attestors. `start` prints one JSON line: the metadata_url for the agent and
 * the trust file (certificate or JWKS) for the server.
 */
import { resolve } from 'node:path'
import {
  CLOUD_KINDS,
  type CloudIdentity,
  type CloudKind,
  runningCloudSim,
  startCloudSim,
  stopCloudSimDaemon,
} from '../../hardware-sim/cloud/index.js'
import { UsageError } from '../errors.js'
import { type Group, type Leaf, optionalPort, requireString } from './command.js'

const stateOption = {
  type: 'string',
  description: 'state directory (signing keys; created if missing)',
  valueName: 'DIR',
} as const

const TRUST: Readonly<Record<CloudKind, string>> = {
  aws: 'certificate the server trusts: [plugins.NodeAttestor.aws_iid] certificates = { "*" = <trust> }',
  gcp: 'JWKS the server trusts: [plugins.NodeAttestor.gcp_iit] jwks_file = <trust>',
  azure:
    'JWKS the server trusts: [plugins.NodeAttestor.azure_msi.tenants.<tenant>] jwks_file = <trust>',
}

function parseIdentity(text: unknown): CloudIdentity {
  if (text === undefined) return {}
  try {
    const v = JSON.parse(String(text)) as unknown
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object')
    return v as CloudIdentity
  } catch (err) {
    throw new UsageError(`--identity: not a JSON object (${(err as Error).message})`)
  }
}

function kindGroup(kind: CloudKind): Group {
  const start: Leaf = {
    kind: 'command',
    name: 'start',
    summary: `start a simulated ${kind} metadata service on 127.0.0.1 in the background`,
    details:
      `Output: {"kind", "url", "port", "pid", "state", "trust"${kind !== 'aws' ? ', "credentials"' : ''}}; url is the agent's metadata_url, trust the\n${TRUST[kind]}.\n` +
      (kind === 'gcp'
        ? 'credentials is a service-account key file for the Compute API it serves (token endpoint and\ninstances.get on url): [plugins.NodeAttestor.gcp_iit] use_instance_metadata = true,\nservice_account_file = <credentials>, compute_endpoint = <url>.\n'
        : '') +
      (kind === 'azure'
        ? "It also serves AAD (POST /<tenant>/oauth2/v2.0/token, client credentials) and Resource Manager\n(VM and NIC GETs) on url: [plugins.NodeAttestor.azure_msi] authority_url = resource_manager_endpoint\n= <url>, tenants.<t>.app_id = the identity's azureApi client ID, app_secret_file = <credentials>\n(its client secret, mode 0600), or use_msi, msi_endpoint = <url>. Resources - List pages the\nsubscription's VMs, for user-assigned identities (identity userAssigned, systemAssigned = false).\n"
        : '') +
      (kind === 'gcp'
        ? "It serves the instance's service-account token too (GCE_METADATA_HOST=127.0.0.1:<port>).\n"
        : '') +
      '--identity overrides the simulated instance, e.g. \'{"accountId":"123456789012"}\'.',
    options: {
      state: stateOption,
      port: { type: 'string', description: 'listen port (default: a free one)', valueName: 'N' },
      identity: {
        type: 'string',
        description: 'JSON object overriding the instance identity',
        valueName: 'JSON',
      },
    },
    async run(values, io) {
      const state = resolve(requireString(values, 'state'))
      const existing = runningCloudSim(state, kind)
      if (existing) {
        io.out(`${JSON.stringify({ kind, ...existing, already_running: true })}\n`)
        return 0
      }
      const port = optionalPort(values)
      const sim = await startCloudSim({
        kind,
        stateDir: state,
        detached: true,
        identity: parseIdentity(values.identity),
        ...(port === undefined ? {} : { port }),
      })
      const out = {
        kind,
        url: sim.url,
        port: sim.port,
        pid: sim.pid,
        state: sim.stateDir,
        trust: sim.trust,
        ...(sim.credentials ? { credentials: sim.credentials } : {}),
      }
      io.out(`${JSON.stringify(out)}\n`)
      return 0
    },
  }
  const stop: Leaf = {
    kind: 'command',
    name: 'stop',
    summary: `stop the ${kind} metadata service started for --state (its keys are kept)`,
    options: { state: stateOption },
    async run(values, io) {
      const state = resolve(requireString(values, 'state'))
      const r = await stopCloudSimDaemon(state, kind)
      io.out(`${JSON.stringify({ stopped: true, pid: r.pid, state })}\n`)
      return 0
    },
  }
  return {
    kind: 'group',
    name: kind,
    summary: `a simulated ${kind} instance-metadata service`,
    children: [start, stop],
  }
}

export const cloudGroup: Group = {
  kind: 'group',
  name: 'cloud',
  summary: 'simulated cloud instance-metadata services (AWS IMDSv2, GCP, Azure IMDS)',
  children: CLOUD_KINDS.map(kindGroup),
}
