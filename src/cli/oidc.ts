import { Logger } from '../common/log.js'
import { type Group, type Leaf, requireString } from './command.js'
import { loadOidcConfig } from './oidc/config.js'
import { startOidcProvider } from './oidc/provider.js'
import { keySource } from './oidc/source.js'

/**
 * `oidc run`: the OIDC discovery provider, a process of its own as SPIRE's is, so the server's
 * node API and admin socket are never exposed to the relying parties that fetch keys.
 */
const oidcRunCommand: Leaf = {
  kind: 'command',
  name: 'run',
  summary: 'serve /.well-known/openid-configuration and /keys for the trust domain',
  details:
    'Keys come from an agent Workload API ([oidc.workload_api]) or the server admin socket\n' +
    '([oidc.server_api]), polled every poll_interval; see docs/oidc.md. Prints one JSON line when\n' +
    'it listens; logs are JSON lines on stderr.',
  options: {
    config: { type: 'string', description: 'config file (TOML)', valueName: 'FILE' },
  },
  async run(values, io) {
    const config = loadOidcConfig(requireString(values, 'config'))
    const logger = new Logger(config.log, 'oidc')
    const provider = await startOidcProvider(config, keySource(config.source), logger.log)
    const stopped = new Promise<void>((resolve) => {
      process.once('SIGTERM', () => resolve())
      process.once('SIGINT', () => resolve())
    })
    const onHup = () => logger.reopen()
    process.on('SIGHUP', onHup)
    io.out(
      `${JSON.stringify({ listening: `${config.bindAddress}:${provider.port}`, tls: config.tls !== undefined, source: config.source.kind })}\n`,
    )
    await stopped
    process.removeListener('SIGHUP', onHup)
    await provider.close()
    logger.close()
    return 0
  },
}

export const oidcGroup: Group = {
  kind: 'group',
  name: 'oidc',
  summary: 'the OIDC discovery provider (JWT-SVID keys for OIDC relying parties)',
  children: [oidcRunCommand],
}
