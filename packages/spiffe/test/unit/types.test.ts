import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

// Runs from dist/packages/spiffe/test/unit; the declarations tsc emitted sit in ../../src.
const src = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src')

function declarations(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n)
    return statSync(p).isDirectory() ? declarations(p) : p.endsWith('.d.ts') ? [p] : []
  })
}

test('the public declarations never use `any`', () => {
  const files = declarations(src)
  assert.ok(files.length >= 10, files.join())
  for (const f of files) {
    const code = readFileSync(f, 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, '')
      .replace(/\/\/.*$/gm, '')
    assert.doesNotMatch(code, /\bany\b/, f)
  }
})
