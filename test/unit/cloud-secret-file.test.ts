import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs, { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { readCredentialsFile } from '../../src/attestors/cloud/gcp/credentials.js'
import { readSecretFile } from '../../src/attestors/cloud/secret.js'

function tempDir(t: { after: (f: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-secret-file-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * Runs `read` while the attacker wins the race every time: `from` is renamed over `to` the moment
 * any stat returns, whichever stat the reader makes its checks with.
 */
function swapAfterFirstStat<R>(
  from: string,
  to: string,
  read: () => R,
): { swapped: boolean; result: R } {
  const saved = { lstatSync: fs.lstatSync, statSync: fs.statSync, fstatSync: fs.fstatSync }
  let swapped = false
  const swapAfter =
    <A extends unknown[], S>(f: (...a: A) => S) =>
    (...a: A): S => {
      const r = f(...a)
      if (!swapped) {
        swapped = true
        fs.renameSync(from, to)
      }
      return r
    }
  Object.assign(fs, {
    lstatSync: swapAfter(saved.lstatSync),
    statSync: swapAfter(saved.statSync),
    fstatSync: swapAfter(saved.fstatSync),
  })
  syncBuiltinESMExports()
  try {
    return { result: read(), swapped }
  } finally {
    Object.assign(fs, saved)
    syncBuiltinESMExports()
  }
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

  const { swapped, result } = swapAfterFirstStat(link, file, () =>
    readSecretFile('app_secret_file', file),
  )
  assert.ok(swapped, 'the file was never checked')
  assert.deepEqual(result, { secret: 'the-real-secret' })
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

test('GCP credentials file: a world-writable file renamed over it right after the check is not read (the token_uri stays the checked one)', (t) => {
  const dir = tempDir(t)
  const creds = (tokenUri: string) =>
    JSON.stringify({
      type: 'authorized_user',
      client_id: 'c',
      client_secret: 's',
      refresh_token: 'r',
      token_uri: tokenUri,
    })
  const file = join(dir, 'adc.json')
  writeFileSync(file, creds('https://oauth2.googleapis.com/token'), { mode: 0o600 })
  const planted = join(dir, 'planted.json')
  writeFileSync(planted, creds('https://attacker.example/token'))
  fs.chmodSync(planted, 0o666)
  const { swapped, result } = swapAfterFirstStat(planted, file, () => readCredentialsFile(file))
  assert.ok(swapped, 'the file was never checked')
  assert.equal((result as { tokenUri: string }).tokenUri, 'https://oauth2.googleapis.com/token')
})
