/** The root's name and summary, shared by the full tree (tree.ts) and the `agent run` one. */
export const ROOT = {
  kind: 'group',
  name: 'spiffe-edge',
  summary:
    'spiffe-edge: a hardware-attested SPIFFE agent and server for edge fleets.\n' +
    'Server (node API, admin), agent (Workload API), TPM diagnostics and hardware-sim.',
} as const

export const AGENT_GROUP = {
  kind: 'group',
  name: 'agent',
  summary: 'the node agent: attests, keeps SVIDs fresh, serves the Workload API',
} as const
