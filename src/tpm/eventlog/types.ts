/**
 * TCG PC Client Platform Firmware Profile event types (section 10.4.1) and names. The type of an
 * event is NOT covered by its digest: a name here only says what the log claims.
 */
export const EV = {
  PREBOOT_CERT: 0x0,
  POST_CODE: 0x1,
  UNUSED: 0x2,
  NO_ACTION: 0x3,
  SEPARATOR: 0x4,
  ACTION: 0x5,
  EVENT_TAG: 0x6,
  S_CRTM_CONTENTS: 0x7,
  S_CRTM_VERSION: 0x8,
  CPU_MICROCODE: 0x9,
  PLATFORM_CONFIG_FLAGS: 0xa,
  TABLE_OF_DEVICES: 0xb,
  COMPACT_HASH: 0xc,
  IPL: 0xd,
  IPL_PARTITION_DATA: 0xe,
  NONHOST_CODE: 0xf,
  NONHOST_CONFIG: 0x10,
  NONHOST_INFO: 0x11,
  OMIT_BOOT_DEVICE_EVENTS: 0x12,
  POST_CODE2: 0x13,
  EFI_EVENT_BASE: 0x80000000,
  EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EFI_VARIABLE_BOOT: 0x80000002,
  EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EFI_GPT_EVENT: 0x80000006,
  EFI_ACTION: 0x80000007,
  EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EFI_HANDOFF_TABLES: 0x80000009,
  EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EFI_HANDOFF_TABLES2: 0x8000000b,
  EFI_VARIABLE_BOOT2: 0x8000000c,
  EFI_GPT_EVENT2: 0x8000000d,
  EFI_HCRTM_EVENT: 0x80000010,
  EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
} as const

const NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(EV).map(([k, v]) => [v, `EV_${k}`] as const),
)

/** The spec name of an event type (EV_SEPARATOR), or its hex value when the spec has none. */
export function eventTypeName(type: number): string {
  return NAMES.get(type) ?? `0x${type.toString(16).padStart(8, '0')}`
}

/** A type the TCG PC Client profile defines (the verifier knows what its data means). */
export function isKnownEventType(type: number): boolean {
  return NAMES.has(type) && type !== EV.EFI_EVENT_BASE
}

/** One event as the log holds it. `digests` by TPM hash id; EV_NO_ACTION events are not extended. */
export interface LogEvent {
  /** Position in the log, 0-based, counting the header event. */
  readonly index: number
  readonly pcr: number
  readonly type: number
  readonly digests: ReadonlyMap<number, Uint8Array>
  readonly data: Uint8Array
}

export interface EventLog {
  /** 'sha1' = TCG 1.2 (SHA-1 only) format; 'crypto-agile' = Spec ID Event03 header. */
  readonly format: 'sha1' | 'crypto-agile'
  /** Banks the log records (TPM hash ids), in header order. */
  readonly banks: readonly number[]
  /** Every event after the header, in log order (EV_NO_ACTION included). */
  readonly events: readonly LogEvent[]
  /** Locality of TPM2_Startup from a StartupLocality EV_NO_ACTION event (sets PCR 0's start). */
  readonly startupLocality: number
}
