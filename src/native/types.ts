/**
 * The whole C++ surface, typed once. Everything crossing the boundary is numbers, strings and
 * marshaled TPM structures (Uint8Array); parsing happens in src/tpm/structures.
 */

export interface NativeReadPublic {
  /** Marshaled TPM2B_PUBLIC. */
  readonly public: Uint8Array
  /** The object's Name (nameAlg || H(TPMT_PUBLIC)). */
  readonly name: Uint8Array
  readonly qualifiedName: Uint8Array
}

export interface NativeNvReadPublic {
  /** Marshaled TPM2B_NV_PUBLIC. */
  readonly nvPublic: Uint8Array
  readonly name: Uint8Array
}

export interface NativeCapability {
  /** Marshaled TPMS_CAPABILITY_DATA. */
  readonly data: Uint8Array
  /** 1 when the TPM has more values after the last one returned. */
  readonly moreData: number
}

/** One ESYS context over one TCTI. One command in flight at a time: callers must queue. */
export interface NativeEsysContext {
  getRandom(bytes: number): Promise<Uint8Array>
  getCapability(capability: number, property: number, count: number): Promise<NativeCapability>
  readPublic(tpmHandle: number): Promise<NativeReadPublic>
  nvReadPublic(nvIndex: number): Promise<NativeNvReadPublic>
  /** authHandle: the index itself (AUTHREAD) or TPM_RH_OWNER / TPM_RH_PLATFORM. */
  nvRead(nvIndex: number, authHandle: number, size: number, offset: number): Promise<Uint8Array>
  close(): void
  isOpen(): boolean
}

export interface PeerCredentials {
  readonly pid: number
  readonly uid: number
  readonly gid: number
}

export interface NativeBinding {
  readonly abiVersion: number
  /** Opens a TCTI from a tpm2-tools style string (`swtpm:host=…,port=…`, `device:/dev/tpmrm0`). */
  openContext(tcti: string): Promise<NativeEsysContext>
  /** getsockopt(SO_PEERCRED) on a connected Unix socket. */
  peerCred(fd: number): PeerCredentials
}

/** Error shape the addon rejects with (turned into TpmError by src/tpm/errors.ts). */
export interface NativeError extends Error {
  code?: string
  rc?: number
  decoded?: string
  errno?: number
}
