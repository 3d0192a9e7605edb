import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  durationOption,
  type Group,
  type Leaf,
  normalizeFlags,
  runCli,
} from '../../src/cli/command.js'
import { main } from '../../src/cli/main.js'
import { cliTree } from '../../src/cli/tree.js'
import { SpiffeEdgeError } from '../../src/errors.js'

async function capture(argv: string[]) {
  let out = ''
  let err = ''
  const code = await main(argv, {
    out: (t) => {
      out += t
    },
    err: (t) => {
      err += t
    },
    env: {},
  })
  return { code, out, err }
}

function paths(node: Group | Leaf, prefix: string[] = []): string[][] {
  if (node.kind === 'command') return [prefix]
  return [prefix, ...node.children.flatMap((c) => paths(c, [...prefix, c.name]))]
}

test('--help works on every level of the command tree', async () => {
  const all = paths(cliTree)
  assert.ok(all.some((p) => p.join(' ') === 'sim tpm start'))
  assert.ok(all.some((p) => p.join(' ') === 'tpm info'))
  for (const p of all) {
    const r = await capture([...p, '--help'])
    assert.equal(r.code, 0, p.join(' '))
    assert.match(r.out, /Usage: spiffe-edge/, p.join(' '))
  }
})

test('an unknown command or flag is ERR_USAGE with exit code 2', async () => {
  const unknown = await capture(['nope'])
  assert.equal(unknown.code, 2)
  assert.match(unknown.err, /error\[ERR_USAGE\]/)
  const flag = await capture(['sim', 'tpm', 'start', '--state', '/tmp/x', '--bogus', '--json'])
  assert.equal(flag.code, 2)
  assert.equal(JSON.parse(flag.err).error.code, 'ERR_USAGE')
})

test('a missing required option or a bad port is ERR_USAGE', async () => {
  assert.equal(
    JSON.parse((await capture(['sim', 'tpm', 'start', '--json'])).err).error.code,
    'ERR_USAGE',
  )
  const port = await capture([
    'sim',
    'tpm',
    'start',
    '--state',
    '/tmp/x',
    '--port',
    '99999',
    '--json',
  ])
  assert.equal(port.code, 2)
  assert.equal(JSON.parse(port.err).error.code, 'ERR_USAGE')
})

test("SPIRE's flag spellings (-spiffeID, -socketPath) name the same options as ours", () => {
  const opts = {
    'socket-path': { type: 'string' },
    spiffeID: { type: 'string' },
    silent: { type: 'boolean' },
  } as const
  assert.deepEqual(
    normalizeFlags(['-socketPath', '/s', '-spiffeid=spiffe://x/y', '-silent'], opts),
    ['--socket-path', '/s', '--spiffeID=spiffe://x/y', '--silent'],
  )
  // A value that starts with '-' is a value, not a flag, and a single letter stays a short flag.
  assert.deepEqual(normalizeFlags(['--socket_path', '-silent', '-h'], opts), [
    '--socket-path',
    '-silent',
    '-h',
  ])
  // Two options that would read the same are a bug in the tree, found at once.
  assert.throws(() => normalizeFlags([], { 'a-b': { type: 'string' }, aB: { type: 'string' } }))
})

test('every command in the tree has flags that cannot be confused with each other', () => {
  const leaves = (n: Group | Leaf): Leaf[] =>
    n.kind === 'command' ? [n] : n.children.flatMap(leaves)
  for (const l of leaves(cliTree)) {
    assert.doesNotThrow(
      () => normalizeFlags([], { ...l.options, json: { type: 'boolean' } }),
      l.name,
    )
  }
})

test('durations as SPIRE writes them: -ttl 10m, -timeout 500ms; nonsense is ERR_USAGE', () => {
  assert.equal(durationOption({ ttl: '10m' }, 'ttl'), 600)
  assert.equal(durationOption({ ttl: '1h30m' }, 'ttl'), 5400)
  assert.equal(durationOption({ ttl: '45' }, 'ttl'), 45)
  assert.equal(durationOption({}, 'ttl'), undefined)
  assert.equal(durationOption({ timeout: '500ms' }, 'timeout', { fraction: true }), 0.5)
  for (const bad of ['10x', '-5', '1.5', '', 'm10']) {
    assert.throws(
      () => durationOption({ ttl: bad }, 'ttl'),
      (e: unknown) => e instanceof SpiffeEdgeError && e.code === 'ERR_USAGE',
      bad,
    )
  }
  assert.throws(() => durationOption({ timeout: '0' }, 'timeout', { positive: true }))
})

test('--version and -version print the package version; -help works with one dash', async () => {
  for (const flag of ['--version', '-version']) {
    const r = await capture([flag])
    assert.equal(r.code, 0)
    assert.match(r.out, /^spiffe-edge \d+\.\d+\.\d+/)
  }
  const help = await capture(['server', 'entry', 'create', '-help'])
  assert.equal(help.code, 0)
  assert.match(help.out, /-spiffeID ID/)
  assert.match(help.out, /-parentID ID/)
})

test('`api fetch` alone is `api fetch x509`, as spire-agent has it', async () => {
  // No agent listens there: the x509 fetch runs and says so (not the group's help, exit 2).
  const r = await capture([
    'api',
    'fetch',
    '-socketPath',
    '/nonexistent/api.sock',
    '-timeout',
    '1s',
    '--json',
  ])
  assert.equal(r.code, 1)
  const code = (JSON.parse(r.err) as { error: { code: string } }).error.code
  assert.notEqual(code, 'ERR_USAGE')
  const group = await capture(['api', 'fetch', '--help'])
  assert.match(group.out, /x509/)
})

test('--json means the same everywhere: JSON errors, and JSON output where a command has -output', async () => {
  const r = await capture(['api', 'fetch', 'x509', '--help'])
  assert.match(r.out, /-json\s+print JSON: the result \(as -output json\) and errors/)
  const srv = await capture(['server', 'entry', 'list', '--help'])
  assert.match(srv.out, /-json\s+the same as -output json/)
  const seen: unknown[] = []
  const tree: Group = {
    kind: 'group',
    name: 't',
    summary: 't',
    children: [
      {
        kind: 'command',
        name: 'c',
        summary: 'c',
        options: { output: { type: 'string', default: 'pretty', description: 'o' } },
        run: async (v) => {
          seen.push(v.output)
          return 0
        },
      },
    ],
  }
  const io = { out: () => {}, err: () => {}, env: {} }
  await runCli(tree, ['c', '--json'], io)
  await runCli(tree, ['c', '-json', '-output', 'pretty'], io)
  await runCli(tree, ['c'], io)
  assert.deepEqual(seen, ['json', 'pretty', 'pretty'])
})
