/** Our replay against an independent implementation: tpm2-tools' tpm2_eventlog. */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parsePcrsFile } from '../../src/cli/tpm-eventlog.js'
import { parseEventLog } from '../../src/tpm/eventlog/parse.js'
import { replayBank } from '../../src/tpm/eventlog/replay.js'
import { EVENT_LOGS, eventLogPath, readEventLogFixture } from '../helpers/eventlogs.js'
import { run } from '../helpers/exec.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

test('replay agrees with tpm2-tools (tpm2_eventlog) on every real log it can read', async () => {
  let compared = 0
  for (const name of EVENT_LOGS) {
    const r = await run('tpm2_eventlog', [eventLogPath(name)])
    // tpm2_eventlog refuses the 49-byte log and crashes on the Windows option-ROM log; we parse both.
    if (r.code !== 0) continue
    const theirs = parsePcrsFile(r.stdout.slice(r.stdout.lastIndexOf('\npcrs:')))
    const log = parseEventLog(readEventLogFixture(name))
    for (const bank of log.banks) {
      const ours = replayBank(log, bank)
      const want = theirs.get(bank)
      assert.ok(want, `${name}: tpm2_eventlog has no bank ${bank}`)
      assert.deepEqual(
        [...ours].map(([p, v]) => [p, hex(v)]).sort((a, b) => Number(a[0]) - Number(b[0])),
        [...want].map(([p, v]) => [p, hex(v)]).sort((a, b) => Number(a[0]) - Number(b[0])),
        `${name} bank ${bank}`,
      )
      compared++
    }
  }
  assert.ok(compared >= 10, `compared ${compared} banks`)
})
