/**
 * One error hierarchy for the whole project. Every error a user can meet carries a stable `code`
 * (assert on it, never on message text) and a `remedy`: one sentence that says what to do next.
 * Edges (CLI, Workload API, transports) map codes to exit codes or gRPC statuses; nothing else does.
 */

export type ErrorCode =
  | 'ERR_USAGE'
  | 'ERR_CONFIG'
  | 'ERR_LOG_FILE'
  | 'ERR_HEALTH_LISTENER'
  | 'ERR_METRICS_LISTENER'
  | 'ERR_NATIVE_UNAVAILABLE'
  | 'ERR_TPM'
  | 'ERR_TPM_CLOSED'
  | 'ERR_TPM_BUSY'
  | 'ERR_TPM_ARGUMENT'
  | 'ERR_TPM_STRUCTURE'
  | 'ERR_TPM_VERIFY'
  | 'ERR_TPM_UNSUPPORTED'
  | 'ERR_EVENT_LOG'
  | 'ERR_EK_CERTIFICATE'
  | 'ERR_PEERCRED'
  | 'ERR_PEERCRED_UNAVAILABLE'
  | 'ERR_SIM_BINARY_MISSING'
  | 'ERR_SIM_PORT_IN_USE'
  | 'ERR_SIM_STATE_DIR'
  | 'ERR_SIM_START_FAILED'
  | 'ERR_SIM_NOT_RUNNING'
  | 'ERR_SIM_COMMAND_FAILED'
  | 'ERR_SPIFFE_ID_INVALID'
  | 'ERR_SVID_INVALID'
  | 'ERR_BUNDLE_INVALID'
  | 'ERR_FEDERATION_FETCH'
  | 'ERR_FEDERATION_STATIC'
  | 'ERR_KEY_MANAGER'
  | 'ERR_PKCS11'
  | 'ERR_PKCS11_MODULE'
  | 'ERR_PKCS11_PIN'
  | 'ERR_PKCS11_TOKEN_MISSING'
  | 'ERR_PKCS11_TOKEN_REMOVED'
  | 'ERR_PKCS11_KEY_MISSING'
  | 'ERR_NODE_PROTOCOL'
  | 'ERR_CSR_INVALID'
  | 'ERR_ADMIN_PROTOCOL'
  | 'ERR_ADMIN_SOCKET'
  | 'ERR_ADMIN_SOCKET_IN_USE'
  | 'ERR_WORKLOAD_PROTOCOL'
  | 'ERR_INTERNAL'
  | 'ERR_INTERNAL_STATE'
  | 'ERR_AUTH'
  | 'ERR_ATTESTATION_FAILED'
  | 'ERR_CLOUD_METADATA'
  | 'ERR_CLOUD_API'
  | 'ERR_SERVER_UNREACHABLE'
  | 'ERR_SERVER_REFUSED'
  | 'ERR_SERVER_UNTRUSTED'
  | 'ERR_JOIN_TOKEN_MISSING'
  | 'ERR_AGENT_BANNED'
  | 'ERR_AGENT_EVICTED'
  | 'ERR_AGENT_SVID_EXPIRED'
  | 'ERR_CACHE_SEAL'
  | 'ERR_CACHE_PCR_MISMATCH'
  | 'ERR_AVAILABILITY_TARGET_UNMET'
  | 'ERR_AGENT_SERVER_UNREACHABLE'
  | 'ERR_WORKLOAD_SOCKET_IN_USE'
  | 'ERR_AGENT_STATE'
  | 'ERR_DATASTORE_UNAVAILABLE'
  | 'ERR_DATASTORE_VERSION'
  | 'ERR_DATASTORE_CONFLICT'
  | 'ERR_DATASTORE_NOT_FOUND'
  | 'ERR_DATASTORE_INVALID'
  | 'ERR_DATASTORE_BUSY'
  | 'ERR_DATASTORE_IO'
  | 'ERR_DATASTORE_CLOSED'
  | 'ERR_DATASTORE_MISSING'
  | 'ERR_DATASTORE_CORRUPT'
  | 'ERR_DATA_DIR'
  | 'ERR_DATA_DIR_LOCKED'
  | 'ERR_SERVER_BIND'
  | 'ERR_WORKLOAD_API'
  | 'ERR_WORKLOAD_ENDPOINT'
  | 'ERR_WORKLOAD_ATTESTATION'
  | 'ERR_BROKER_ADMIN'
  | 'ERR_BROKER_ADMIN_AUTH'
  | 'ERR_BROKER_ADMIN_UNREACHABLE'
  | 'ERR_BROKER_ADMIN_UNSAFE'
  | 'ERR_SOURCE_CLOSED'
  | 'ERR_SOURCE_TIMEOUT'
  | 'ERR_SOURCE_NO_SVID'
  | 'ERR_PEER_UNAUTHORIZED'
  | 'ERR_MQTT_ENCRYPTION'
  | 'ERR_MQTT_BROKER'
  | 'ERR_OIDC_SOURCE'
  | 'ERR_OIDC_LISTEN'

export interface ErrorDetails {
  readonly remedy?: string
  readonly cause?: unknown
  /**
   * What may be told to an unauthenticated peer (an attesting agent) in place of the message:
   * the stable part without the detail (paths, policy, upstream answers) that stays in our log.
   */
  readonly publicMessage?: string
}

export class SpiffeEdgeError extends Error {
  readonly code: ErrorCode
  readonly remedy: string | undefined
  readonly publicMessage: string | undefined

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = new.target.name
    this.code = code
    this.remedy = details.remedy
    this.publicMessage = details.publicMessage
  }

  /** JSON shape used by `--json` CLI output and logs: never includes secrets. */
  toJSON(): { code: ErrorCode; message: string; remedy?: string } {
    return this.remedy === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, remedy: this.remedy }
  }
}

/** Wrong command line: unknown flag, missing argument. Exit code 2, like most CLIs. */
export class UsageError extends SpiffeEdgeError {
  constructor(message: string, remedy = 'run the command with --help to see its usage') {
    super('ERR_USAGE', message, { remedy })
  }
}

/** The TPM addon (or the tpm2-tss libraries it links) could not be loaded. */
export class NativeUnavailableError extends SpiffeEdgeError {
  readonly searched: readonly string[]

  constructor(searched: readonly string[], cause: unknown) {
    const why = cause instanceof Error ? cause.message : String(cause)
    super(
      'ERR_NATIVE_UNAVAILABLE',
      `the TPM addon could not be loaded (searched: ${searched.join(', ')}): ${why}`,
      {
        cause,
        remedy:
          'install tpm2-tss (Debian: apt-get install libtss2-dev) and build the addon with `npm run build:native`, or run scripts/install.sh',
      },
    )
    this.searched = searched
  }
}

/** A hardware-sim failure: a simulator binary, port or state directory problem. */
export class SimError extends SpiffeEdgeError {}

export function isSpiffeEdgeError(err: unknown): err is SpiffeEdgeError {
  return err instanceof SpiffeEdgeError
}
