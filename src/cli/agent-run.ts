import { startAgent } from '../agent/agent.js'
import { parseAgentConfig } from '../agent/config.js'
import { systemdNotifier } from '../native/sd-notify.js'
import { type Leaf, requireString } from './command.js'
import { EXPAND_ENV, readConfigText } from './config-source.js'

/** `agent run`: attests (or restores its identity), serves the Workload API until SIGTERM/SIGINT. */
export const agentRunCommand: Leaf = {
  kind: 'command',
  name: 'run',
  summary: 'run the agent',
  details:
    'Paths in the config are relative to the config file; flags override it. Prints one JSON line\n' +
    'when the Workload API is up; logs are JSON lines on stderr (log_format, log_file in the\n' +
    'config); SIGHUP reopens log_file after logrotate.',
  options: {
    config: {
      type: 'string',
      description: "config file (TOML, or SPIRE's agent.conf in HCL)",
      valueName: 'FILE',
    },
    expandEnv: EXPAND_ENV,
    'data-dir': { type: 'string', description: 'override agent.data_dir', valueName: 'DIR' },
    'socket-path': { type: 'string', description: 'override agent.socket_path', valueName: 'PATH' },
    'server-address': {
      type: 'string',
      description: 'override the server host:port',
      valueName: 'ADDR',
    },
    'join-token': {
      type: 'string',
      description: 'join token for the first attestation',
      valueName: 'T',
    },
    'trust-bundle': {
      type: 'string',
      description: 'PEM bundle to trust the server with',
      valueName: 'FILE',
    },
    'insecure-bootstrap': {
      type: 'boolean',
      description: 'trust the server on first use (demos only)',
    },
    tcti: {
      type: 'string',
      description: 'TPM for the tpm node attestor (e.g. swtpm:host=…,port=…)',
      valueName: 'T',
    },
  },
  async run(values, io) {
    const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined)
    const file = requireString(values, 'config')
    const src = await readConfigText(file, 'agent', {
      expandEnv: values.expandEnv === true,
      env: io.env,
    })
    for (const note of src.notes)
      io.err(`${JSON.stringify({ level: 'warn', component: 'cli', msg: note })}\n`)
    const config = parseAgentConfig(src.text, file, {
      ...(str('data-dir') ? { dataDir: str('data-dir')! } : {}),
      ...(str('socket-path') ? { socketPath: str('socket-path')! } : {}),
      ...(str('server-address') ? { serverAddress: str('server-address')! } : {}),
      ...(str('join-token') ? { joinToken: str('join-token')! } : {}),
      ...(str('trust-bundle')
        ? { trustBundlePath: str('trust-bundle')!, insecureBootstrap: false }
        : {}),
      ...(values['insecure-bootstrap'] === true ? { insecureBootstrap: true } : {}),
      ...(str('tcti') ? { tcti: str('tcti')! } : {}),
    })
    const agent = await startAgent(config)
    // Listen for the signals before saying we are up: a script may signal as soon as it reads the line.
    const notify = systemdNotifier(process.env, (msg, fields) =>
      io.err(`${JSON.stringify({ level: 'warn', component: 'cli', msg, ...fields })}\n`),
    )
    const stopped = new Promise<undefined>((resolve) => {
      const stop = () => {
        notify.stopping()
        resolve(undefined)
      }
      process.once('SIGTERM', stop)
      process.once('SIGINT', stop)
    })
    // logrotate: SIGHUP reopens log_file (and never stops the agent).
    const onHup = () => {
      notify.reloading()
      agent.logger?.reopen()
      notify.ready()
    }
    process.on('SIGHUP', onHup)
    io.out(
      `${JSON.stringify({ agent_id: agent.manager.agentId, socket_path: agent.socketPath })}\n`,
    )
    // Type=notify: attested, SVIDs cached, the Workload API socket accepts by now.
    notify.ready(`serving ${agent.manager.agentId} on ${agent.socketPath}`)
    // A banned or evicted agent stops on its own; its error is printed like any other (exit 1).
    const fatal = await Promise.race([stopped, agent.terminated])
    if (fatal) notify.stopping()
    process.removeListener('SIGHUP', onHup)
    await agent.close()
    if (fatal) throw fatal
    return 0
  },
}
