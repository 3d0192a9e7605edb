import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { NativeUnavailableError } from '../../src/errors.js'
import { loadNative, nativeCandidates } from '../../src/native/load.js'

test('with no build present, loading is ERR_NATIVE_UNAVAILABLE listing every searched path', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'spiffe-edge-native-'))
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const err = (() => {
    try {
      loadNative({ root })
    } catch (e) {
      return e
    }
    return undefined
  })()
  assert.ok(err instanceof NativeUnavailableError)
  assert.equal(err.code, 'ERR_NATIVE_UNAVAILABLE')
  assert.deepEqual(err.searched, nativeCandidates({ root }))
  assert.ok(err.searched.every((p) => p.startsWith(root)))
  assert.match(err.remedy ?? '', /build:native/)
})

test('a file that is not a loadable addon is ERR_NATIVE_UNAVAILABLE with the loader error as cause', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-native-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'tpm_native.node')
  writeFileSync(path, 'not an ELF object')
  assert.throws(
    () => loadNative({ path }),
    (e: unknown) => {
      assert.ok(e instanceof NativeUnavailableError)
      assert.ok(e.cause instanceof Error)
      assert.deepEqual(e.searched, [path])
      return true
    },
  )
})
