/**
 * The registration entries authorized to this agent, kept in step with the server by incremental
 * sync (SyncEntries from the last revision, with what we hold) and saved so a restart serves them
 * before the server answers. Also which entries a workload's selectors match.
 */
import type { AgentAuth, NodeClient } from '../../transport/node-client.js'
import type { EntryMessage } from '../../transport/proto.js'
import type { AgentStorage } from '../storage.js'
import type { Selector } from '../workload-api/types.js'

export const sel = (s: Selector) => `${s.type}:${s.value}`

export class EntrySync {
  entries = new Map<string, EntryMessage>()
  private revision = 0
  private readonly client: NodeClient
  private readonly storage: AgentStorage

  constructor(client: NodeClient, storage: AgentStorage) {
    this.client = client
    this.storage = storage
  }

  restore(json: string, revision: number | undefined): void {
    for (const e of JSON.parse(json) as EntryMessage[]) this.entries.set(e.id, e)
    this.revision = revision ?? 0
  }

  /** A different identity: nothing synced for the old one applies. */
  clear(): void {
    this.entries.clear()
    this.revision = 0
  }

  /** One SyncEntries round; true when the entries changed (and were saved). */
  async sync(auth: AgentAuth): Promise<boolean> {
    const known = [...this.entries.values()].map((e) => ({
      id: e.id,
      revisionNumber: e.revisionNumber,
    }))
    const r = await this.client.call('SyncEntries', { sinceRevision: this.revision, known }, auth)
    if (r.full) this.entries = new Map(r.entries.map((e) => [e.id, e]))
    else {
      for (const e of r.entries) this.entries.set(e.id, e)
      for (const id of r.deletedIds) this.entries.delete(id)
    }
    const changed = r.full || r.entries.length > 0 || r.deletedIds.length > 0
    this.revision = r.revision
    if (changed) {
      this.storage.save({
        revision: this.revision,
        entries: JSON.stringify([...this.entries.values()]),
      })
    }
    return changed
  }

  /** Entries whose selectors are all among `selectors`, in id order (stable answers). */
  matching(selectors: ReadonlySet<string>): EntryMessage[] {
    return [...this.entries.values()]
      .filter((e) => e.selectors.length > 0 && e.selectors.every((s) => selectors.has(sel(s))))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  }
}
