import { DEFAULT_ADMIN_SOCKET } from '../common/socket-dir.js'
import { socketPeerCred } from '../native/peercred.js'
import { systemdNotifier } from '../native/sd-notify.js'
import { parseServerConfig } from '../server/config.js'
import { startServer } from '../server/server.js'
import { type Leaf, optionalPort, requireString } from './command.js'
import { EXPAND_ENV, readConfigText } from './config-source.js'

/** `server run`: runs until SIGTERM/SIGINT, then shuts down gracefully. */
export const serverRunCommand: Leaf = {
  kind: 'command',
  name: 'run',
  summary: 'run the server',
  details:
    'Paths in the config are relative to the config file. Flags override the file, so a server can\n' +
    'start in a temp dir with one command line. Logs are JSON lines on stderr.',
  options: {
    config: {
      type: 'string',
      description: "config file (TOML, or SPIRE's server.conf in HCL)",
      valueName: 'FILE',
    },
    expandEnv: EXPAND_ENV,
    'data-dir': { type: 'string', description: 'override server.data_dir', valueName: 'DIR' },
    'trust-domain': {
      type: 'string',
      description: 'override server.trust_domain',
      valueName: 'TD',
    },
    'bind-address': {
      type: 'string',
      description: 'override server.bind_address',
      valueName: 'ADDR',
    },
    port: {
      type: 'string',
      description: 'override server.bind_port (0: any free port)',
      valueName: 'N',
      aliases: ['serverPort'],
    },
    'admin-socket': {
      type: 'string',
      description: `override server.admin_socket (default: ${DEFAULT_ADMIN_SOCKET})`,
      valueName: 'PATH',
      aliases: ['socketPath'],
    },
    reset: {
      type: 'boolean',
      description:
        'start a new CA: move the datastore and key directory aside (renamed *.reset-<time>, not deleted)',
    },
    'tpm-ek-ca': {
      type: 'string',
      description: 'TPM manufacturer CA bundle (overrides plugins.NodeAttestor.tpm.ek_ca_bundle)',
      valueName: 'PATH',
    },
  },
  async run(values, io) {
    const file = requireString(values, 'config')
    const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined)
    const port = values.port === '0' ? 0 : optionalPort(values)
    const overrides = {
      ...(str('data-dir') ? { dataDir: str('data-dir')! } : {}),
      ...(str('trust-domain') ? { trustDomain: str('trust-domain')! } : {}),
      ...(str('bind-address') ? { bindAddress: str('bind-address')! } : {}),
      ...(port !== undefined ? { bindPort: port } : {}),
      ...(str('admin-socket') ? { adminSocket: str('admin-socket')! } : {}),
      ...(str('tpm-ek-ca') ? { tpmEkCa: str('tpm-ek-ca')! } : {}),
    }
    const src = await readConfigText(file, 'server', {
      expandEnv: values.expandEnv === true,
      env: io.env,
    })
    for (const note of src.notes)
      io.err(`${JSON.stringify({ level: 'warn', component: 'cli', msg: note })}\n`)
    const config = parseServerConfig(src.text, file, overrides)
    // The admin socket checks callers' kernel credentials: without the peercred addon the server
    // refuses to start (ERR_PEERCRED_UNAVAILABLE) instead of admitting everyone who can connect.
    const peerCred = socketPeerCred()
    const server = await startServer(config, { peerCred, reset: values.reset === true })
    // Scripts read this line to learn the port when --port 0 was asked.
    // Listen for the signals before saying we are up: a script may signal as soon as it reads the line.
    const notify = systemdNotifier(process.env, (msg, fields) =>
      io.err(`${JSON.stringify({ level: 'warn', component: 'cli', msg, ...fields })}\n`),
    )
    const stopped = new Promise<void>((resolve) => {
      const stop = () => {
        notify.stopping()
        resolve()
      }
      process.once('SIGTERM', stop)
      process.once('SIGINT', stop)
    })
    // logrotate: SIGHUP reopens log_file (and never stops the server).
    const onHup = () => {
      notify.reloading()
      server.logger?.reopen()
      notify.ready()
    }
    process.on('SIGHUP', onHup)
    io.out(
      `${JSON.stringify({ listening: `${config.bindAddress}:${server.port}`, admin_socket: server.adminSocket, trust_domain: config.trustDomain, ...(server.bundleEndpointPort !== undefined ? { bundle_endpoint: `${config.federation?.bundleEndpoint?.address}:${server.bundleEndpointPort}` } : {}) })}\n`,
    )
    // Type=notify: the node API port, the admin socket (and the bundle endpoint) accept by now.
    notify.ready(`serving ${config.trustDomain} on ${config.bindAddress}:${server.port}`)
    await stopped
    process.removeListener('SIGHUP', onHup)
    await server.close()
    return 0
  },
}
