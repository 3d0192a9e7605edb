import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { packageRoot } from '../../src/common/package-root.js'

/** The real logs of test/fixtures/eventlogs (see its README for provenance). */
export const EVENT_LOGS = [
  'coreos_36_shielded_vm_no_secure_boot_eventlog',
  'crypto_agile_eventlog',
  'ebs_event_missing_eventlog',
  'option_rom_eventlog',
  'sb_cert_eventlog',
  'short_no_action_eventlog',
  'ubuntu_2104_shielded_vm_no_secure_boot_eventlog',
] as const

export type EventLogName = (typeof EVENT_LOGS)[number]

export function eventLogPath(name: EventLogName): string {
  return join(packageRoot(import.meta.url), 'test', 'fixtures', 'eventlogs', name)
}

export function readEventLogFixture(name: EventLogName): Uint8Array {
  return new Uint8Array(readFileSync(eventLogPath(name)))
}
