/**
 * The simulated metadata service as its own process (so tests and the demo talk to it over the
 * network, as an agent talks to a real one): `node daemon.js <kind> <stateDir> <port> [identity
 * JSON]`. Writes <stateDir>/cloud-<kind>.json once listening and removes it on SIGTERM.
 */
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { type CloudKind, ensureCloudKeys, writeServiceAccountFile } from './keys.js'
import { type CloudIdentity, DEFAULT_IDENTITY, serveCloudMetadata } from './service.js'

const [kind, stateDir, portText, identityText] = process.argv.slice(2) as [
  CloudKind,
  string,
  string,
  string?,
]
const identity = identityText ? (JSON.parse(identityText) as CloudIdentity) : {}
const keys = await ensureCloudKeys(stateDir, kind)
const { server, port } = await serveCloudMetadata(kind, keys, identity, Number(portText))
const record = join(stateDir, `cloud-${kind}.json`)
const url = `http://127.0.0.1:${port}`
// GCP: the key file the server's service_account_file names (its token_uri is this port's).
// Azure: the app registration's client secret, for the server's app_secret_file (0600).
const azureSecretFile = () => {
  const file = join(stateDir, 'azure-app-secret')
  writeFileSync(file, `${(identity.azureApi ?? DEFAULT_IDENTITY.azureApi).clientSecret}\n`, {
    mode: 0o600,
  })
  return file
}
const credentials =
  kind === 'gcp'
    ? writeServiceAccountFile(
        stateDir,
        keys,
        identity.apiServiceAccount ?? DEFAULT_IDENTITY.apiServiceAccount,
        url,
      )
    : kind === 'azure'
      ? azureSecretFile()
      : undefined
const info = {
  kind,
  url,
  port,
  pid: process.pid,
  state: stateDir,
  trust: keys.trustFile,
  ...(credentials ? { credentials } : {}),
}
writeFileSync(record, `${JSON.stringify(info)}\n`, { mode: 0o600 })
const stop = () => {
  rmSync(record, { force: true })
  server.close()
  server.closeAllConnections()
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
process.stdout.write(`${JSON.stringify(info)}\n`)
