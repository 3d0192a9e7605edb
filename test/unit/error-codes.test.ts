import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { packageRoot } from '../../src/common/package-root.js'

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n)
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : []
  })
}

test('every error code the code uses is in the ErrorCode union, and each appears once', () => {
  const root = packageRoot()
  const errorsTs = readFileSync(join(root, 'src', 'errors.ts'), 'utf8')
  const union = errorsTs.slice(
    errorsTs.indexOf('export type ErrorCode'),
    errorsTs.indexOf('export interface'),
  )
  const declared = [...union.matchAll(/'(ERR_[A-Z0-9_]+)'/g)].map((m) => m[1]!)
  assert.ok(declared.length > 20, 'the union was found')
  assert.equal(new Set(declared).size, declared.length, 'a code is declared twice')
  const used = new Set<string>()
  const packages = readdirSync(join(root, 'packages')).map((p) => join(root, 'packages', p, 'src'))
  for (const f of [
    ...sources(join(root, 'src')),
    ...sources(join(root, 'hardware-sim')),
    ...packages.flatMap(sources),
  ]) {
    for (const m of readFileSync(f, 'utf8').matchAll(/'(ERR_[A-Z0-9_]+)'/g)) used.add(m[1]!)
  }
  const missing = [...used].filter((c) => !declared.includes(c))
  assert.deepEqual(missing, [], 'codes used but not in the ErrorCode union')
})
