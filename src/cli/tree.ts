/**
 * The whole command tree. main.ts loads it for every command but `agent run`, which takes a tree
 * of its own command only, so the agent's cold start does not load the server, sim and API code.
 */
import { agentRunCommand } from './agent-run.js'
import { agentHealthcheck, apiGroup } from './api.js'
import type { Group } from './command.js'
import { configGroup, validateCommand } from './config-cmds.js'
import { keysGroup } from './keys.js'
import { oidcGroup } from './oidc.js'
import { AGENT_GROUP, ROOT } from './root.js'
import { serverGroup } from './server.js'
import { serverRunCommand } from './server-run.js'
import { simGroup } from './sim.js'
import { tpmGroup } from './tpm.js'

export const cliTree: Group = {
  ...ROOT,
  children: [
    serverGroup(serverRunCommand, validateCommand('server')),
    { ...AGENT_GROUP, children: [agentRunCommand, agentHealthcheck, validateCommand('agent')] },
    apiGroup,
    oidcGroup,
    keysGroup,
    tpmGroup,
    simGroup,
    configGroup,
  ],
}
