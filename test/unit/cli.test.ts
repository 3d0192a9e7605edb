import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Group, Leaf } from '../../src/cli/command.js'
import { cliTree, main } from '../../src/cli/main.js'

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
