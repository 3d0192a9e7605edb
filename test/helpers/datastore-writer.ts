// Child process for test/integration/datastore-crash.test.ts: writes entries in a tight loop and
// prints each entry id only after createEntry has resolved (the commit is acknowledged). stdout is
// a pipe, which Node writes synchronously on POSIX, so a printed id is never ahead of its commit.
// Runs until killed.
import { openSqliteDatastore } from '../../src/server/datastore/index.js'

const path = process.argv[2]
if (!path) {
  process.stderr.write('usage: datastore-writer <db path>\n')
  process.exit(2)
}
const ds = await openSqliteDatastore(path)
for (let i = 0; ; i++) {
  const e = await ds.createEntry({
    spiffeId: `spiffe://example.org/crash/${process.pid}/${i}`,
    parentId: 'spiffe://example.org/spire/agent/join_token/crash',
    selectors: [
      { type: 'unix', value: `uid:${i}` },
      { type: 'unix', value: 'gid:0' },
    ],
    x509SvidTtl: 3600,
    jwtSvidTtl: 300,
    dnsNames: [`w${i}.example.org`],
    hint: '',
    federatesWith: [],
    admin: false,
    downstream: false,
    expiresAt: null,
  })
  process.stdout.write(`${e.id}\n`)
  // Every few writes, an update and a tombstoned delete, so the burst has every write shape.
  if (i % 10 === 9) {
    const victim = await ds.createEntry({
      ...(await ds.getEntry(e.id))!,
      spiffeId: `${e.spiffeId}/v`,
    })
    await ds.updateEntry(victim.id, { ...victim, hint: 'updated' })
    await ds.deleteEntry(victim.id)
  }
}
