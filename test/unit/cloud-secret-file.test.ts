import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs, { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { readSecretFile } from '../../src/attestors/cloud/secret.js'

function tempDir(t: { after: (f: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-secret-file-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

test('app_secret_file: a symbolic link swapped in right after the file was checked is not read through (one open, checks on its descriptor)', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'app-secret')
  writeFileSync(file, 'the-real-secret\n', { mode: 0o600 })
  // Someone else's world-readable file, and a link to it ready to be renamed over the checked path.
  const other = join(dir, 'world-readable')
  writeFileSync(other, 'planted-secret\n', { mode: 0o644 })
  const link = join(dir, 'link')
  symlinkSync(other, link)

  // The attacker wins the race every time: the swap happens the moment any stat of the file
  // returns, whichever stat the reader uses for its checks.
  const saved = { lstatSync: fs.lstatSync, statSync: fs.statSync, fstatSync: fs.fstatSync }
  let swapped = false
  const swapAfter =
    <A extends unknown[], R>(f: (...a: A) => R) =>
    (...a: A): R => {
      const r = f(...a)
      if (!swapped) {
        swapped = true
        fs.renameSync(link, file)
      }
      return r
    }
  Object.assign(fs, {
    lstatSync: swapAfter(saved.lstatSync),
    statSync: swapAfter(saved.statSync),
    fstatSync: swapAfter(saved.fstatSync),
  })
  syncBuiltinESMExports()
  let got: ReturnType<typeof readSecretFile>
  try {
    got = readSecretFile('app_secret_file', file)
  } finally {
    Object.assign(fs, saved)
    syncBuiltinESMExports()
  }
  assert.ok(swapped, 'the file was never checked')
  assert.deepEqual(got, { secret: 'the-real-secret' })
})

test('app_secret_file: a FIFO at the path is refused without blocking; a link is refused at the open', (t) => {
  const dir = tempDir(t)
  const fifo = join(dir, 'fifo')
  execFileSync('mkfifo', ['-m', '600', fifo])
  assert.match(JSON.stringify(readSecretFile('app_secret_file', fifo)), /is not a regular file/)
  const target = join(dir, 'target')
  writeFileSync(target, 'x\n', { mode: 0o600 })
  symlinkSync(target, join(dir, 'link'))
  assert.match(
    JSON.stringify(readSecretFile('app_secret_file', join(dir, 'link'))),
    /is not a regular file/,
  )
})

test('app_secret_file: a file that grows past the cap is refused, not read whole', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'big')
  writeFileSync(file, 'a'.repeat(5000), { mode: 0o600 })
  assert.match(JSON.stringify(readSecretFile('app_secret_file', file)), /1 to 4096 bytes/)
  writeFileSync(file, '', { mode: 0o600 })
  assert.match(JSON.stringify(readSecretFile('app_secret_file', file)), /1 to 4096 bytes/)
})
