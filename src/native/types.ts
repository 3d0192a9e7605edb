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
  /** Handles below are ESYS_TR references, not TPM handles (except where named tpmHandle). */
  createPrimary(hierarchy: number, inPublic: Uint8Array): Promise<NativeCreatedPrimary>
  create(parent: number, inPublic: Uint8Array): Promise<NativeKeyBlob>
  load(parent: number, priv: Uint8Array, pub: Uint8Array): Promise<NativeLoaded>
  flushContext(handle: number): Promise<{ readonly flushed: number }>
  trFromTpmPublic(tpmHandle: number): Promise<NativeReference>
  trClose(handle: number): Promise<{ readonly closed: number }>
  evictControl(object: number, persistentTpmHandle: number): Promise<{ readonly handle: number }>
  startPolicySession(hashAlg: number): Promise<{ readonly handle: number }>
  policySecret(session: number, hierarchy: number): Promise<{ readonly ok: number }>
  /** digests: marshaled TPML_DIGEST (2 to 8 branches). */
  policyOr(session: number, digests: Uint8Array): Promise<{ readonly ok: number }>
  /**
   * PolicyPCR. pcrDigest: empty (the TPM uses the current values) or the digest the values must
   * have (TPM_RC_VALUE otherwise); selection: marshaled TPML_PCR_SELECTION.
   */
  policyPcr(
    session: number,
    pcrDigest: Uint8Array,
    selection: Uint8Array,
  ): Promise<{ readonly ok: number }>
  /** The session's current policy digest. */
  policyGetDigest(session: number): Promise<Uint8Array>
  /** credentialBlob: TPM2B_ID_OBJECT, secret: TPM2B_ENCRYPTED_SECRET; returns the decrypted secret. */
  activateCredential(
    activate: number,
    key: number,
    keySession: number,
    credentialBlob: Uint8Array,
    secret: Uint8Array,
  ): Promise<Uint8Array>
  /** selection: TPML_PCR_SELECTION; quoted: TPMS_ATTEST; signature: TPMT_SIGNATURE. */
  quote(signer: number, qualifyingData: Uint8Array, selection: Uint8Array): Promise<NativeQuote>
  pcrRead(selection: Uint8Array): Promise<NativePcrRead>
  certify(object: number, signer: number, qualifyingData: Uint8Array): Promise<NativeCertify>
  /**
   * TPMT_SIGNATURE with the key's scheme, over a digest computed by the caller; `session`: a
   * satisfied policy session for a key with an authPolicy (else the empty password).
   */
  sign(key: number, digest: Uint8Array, session?: number): Promise<Uint8Array>
  /** TPM2_Startup(CLEAR), for a TPM that restarted without one (TPM_RC_INITIALIZE). */
  startup(): Promise<{ readonly ok: number }>
  /** Transient objects and sessions this context has loaded and not flushed. */
  transients(): number
  close(): void
  isOpen(): boolean
}

/** A loaded transient (load): its Name is objectName of the public area the caller passed. */
export interface NativeLoaded {
  readonly handle: number
}

/** An ESYS reference to a persistent object, with the Name of the public area ESYS holds. */
export interface NativeReference extends NativeLoaded {
  readonly name: Uint8Array
}

/** A primary key: its Name is objectName of `public` (ESYS checked it against the TPM's). */
export interface NativeCreatedPrimary extends NativeLoaded {
  /** Marshaled TPM2B_PUBLIC. */
  readonly public: Uint8Array
}

export interface NativeKeyBlob {
  /** Marshaled TPM2B_PRIVATE (wrapped by the parent: useless outside this TPM). */
  readonly private: Uint8Array
  /** Marshaled TPM2B_PUBLIC. */
  readonly public: Uint8Array
}

export interface NativeQuote {
  readonly quoted: Uint8Array
  readonly signature: Uint8Array
}

export interface NativeCertify {
  readonly certifyInfo: Uint8Array
  readonly signature: Uint8Array
}

export interface NativePcrRead {
  readonly updateCounter: number
  readonly selection: Uint8Array
  /** Marshaled TPML_DIGEST. */
  readonly values: Uint8Array
}

export interface PeerCredentials {
  readonly pid: number
  readonly uid: number
  readonly gid: number
  /** Supplementary groups at connect time (SO_PEERGROUPS); absent on kernels before 4.13. */
  readonly groups?: readonly number[]
}

export interface NativeBinding {
  readonly abiVersion: number
  /** Opens a TCTI from a tpm2-tools style string (`swtpm:host=…,port=…`, `device:/dev/tpmrm0`). */
  openContext(tcti: string): Promise<NativeEsysContext>
}

/** Error shape the addon rejects with (turned into TpmError by src/tpm/errors.ts). */
export interface NativeError extends Error {
  code?: string
  rc?: number
  decoded?: string
  errno?: number
}
