import { SpiffeEdgeError } from '../../errors.js'

/** Why an event log was refused: stable values for tests, operators and the attestor. */
export type EventLogReason =
  | 'too_large'
  | 'too_many_events'
  | 'event_too_large'
  | 'truncated'
  | 'header'
  | 'digest'
  | 'bank_missing'
  | 'replay'
  | 'unknown_event'
  | 'event_data'
  | 'pcrs_file'
  | 'policy'

const REMEDIES: Readonly<Record<EventLogReason, string>> = {
  too_large: 'the event log is over the size cap: check that the right file was sent',
  too_many_events: 'the event log has more events than the cap: check that the right file was sent',
  event_too_large: 'one event is over the per-event cap: the log is malformed or hostile',
  truncated: 'the event log ends inside an event: copy the whole binary_bios_measurements file',
  header: 'the log header (Spec ID Event03) is malformed: the log is not a TCG PC Client log',
  digest: 'an event carries digests that do not match the log header: the log is malformed',
  bank_missing: 'the log has no digests for the quoted PCR bank: quote a bank the log records',
  replay:
    'replaying the log does not give the quoted PCR values: the log was altered, or PCRs were extended after boot outside the log',
  unknown_event:
    'an event of a type this verifier does not know is in a PCR the policy reads: its data cannot be trusted',
  event_data: "an event's data does not hash to its digest, or does not parse",
  policy:
    'the node booted into a state the reference state does not allow: update the node or the reference_state file',
  pcrs_file: 'give PCR values as JSON {"sha256": {"0": "<hex>", ...}} (tpm2_pcrread -o json style)',
}

/** A TCG event log that does not parse, replay or pass a check; `reason` says which. */
export class EventLogError extends SpiffeEdgeError {
  readonly reason: EventLogReason
  /** The index of the event at fault in the log, when one is. */
  readonly eventIndex: number | undefined

  constructor(reason: EventLogReason, message: string, eventIndex?: number) {
    super('ERR_EVENT_LOG', message, { remedy: REMEDIES[reason] })
    this.reason = reason
    this.eventIndex = eventIndex
  }

  override toJSON(): ReturnType<SpiffeEdgeError['toJSON']> & { reason: EventLogReason } {
    return { ...super.toJSON(), reason: this.reason }
  }
}
