/**
 * Every error the C++ addons can throw reaches callers as a SpiffeEdgeError subclass with a stable
 * code and a remedy. The codes and error kinds are read from native/src/*.cc itself, so a code
 * added in C++ without a TypeScript mapping fails here.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { packageRoot } from '../../src/common/package-root.js'
import { SpiffeEdgeError } from '../../src/errors.js'
import { loadNative } from '../../src/native/load.js'
import {
  fromPeerCredNative,
  loadPeerCred,
  PEERCRED_ERROR_CODES,
  PeerCredError,
} from '../../src/native/peercred.js'
import { TpmContext } from '../../src/tpm/context.js'
import {
  fromNative,
  NATIVE_ERROR_CODES,
  NATIVE_ERROR_KINDS,
  TpmArgumentError,
} from '../../src/tpm/errors.js'

const srcDir = join(packageRoot(import.meta.url), 'native', 'src')

interface Thrown {
  readonly codes: Set<string>
  readonly kinds: Set<string>
}

/** The codes set on errors (`err.Set("code", …"X")`) and the Napi error classes thrown, per file. */
function scan(file: string): Thrown & { plainErrors: number; codeSets: number } {
  const text = readFileSync(join(srcDir, file), 'utf8')
  const codes = new Set(
    [...text.matchAll(/Set\("code",\s*Napi::String::New\([^,]+,\s*"([A-Z0-9_]+)"\)\)/g)].map(
      (m) => m[1]!,
    ),
  )
  const classes = [...text.matchAll(/Napi::(\w*Error)::New\(/g)].map((m) => m[1]!)
  return {
    codes,
    kinds: new Set(classes.filter((c) => c !== 'Error')),
    plainErrors: classes.filter((c) => c === 'Error').length,
    codeSets: text.match(/Set\("code"/g)?.length ?? 0,
  }
}

// Headers too: shared argument readers (marshal.h) throw from inline functions.
const ccFiles = readdirSync(srcDir).filter((f) => f.endsWith('.cc') || f.endsWith('.h'))
const tpmFiles = ccFiles.filter((f) => f !== 'peercred.cc')

function union(files: readonly string[]): Thrown {
  const codes = new Set<string>()
  const kinds = new Set<string>()
  for (const f of files) {
    const s = scan(f)
    for (const c of s.codes) codes.add(c)
    for (const k of s.kinds) kinds.add(k)
  }
  return { codes, kinds }
}

function nativeShaped(code: string): Error {
  // The shape TpmRcError / the Acquire checks build: message, code, and for ERR_TPM rc + decoded.
  return Object.assign(new Error(`native ${code}`), {
    code,
    rc: 0xa000a,
    decoded: 'tcti:IO failure',
    errno: 9,
  })
}

function assertMapped(mapped: Error, raw: Error, code: string): void {
  assert.ok(mapped instanceof SpiffeEdgeError, `${code}: not a SpiffeEdgeError`)
  assert.notEqual(mapped.constructor, SpiffeEdgeError, `${code}: maps to the base class`)
  assert.equal(mapped.code, code)
  assert.ok((mapped.remedy ?? '').length > 10, `${code}: no remedy`)
  assert.equal(mapped.cause, raw, `${code}: the native error is kept as the cause`)
}

test('the scan finds the addon errors it is meant to find (the regexes are not stale)', () => {
  assert.ok(ccFiles.includes('esys_context.cc') && ccFiles.includes('peercred.cc'))
  const tpm = union(tpmFiles)
  for (const c of ['ERR_TPM', 'ERR_TPM_CLOSED', 'ERR_TPM_BUSY', 'ERR_TPM_STRUCTURE']) {
    assert.ok(tpm.codes.has(c), c)
  }
  assert.deepEqual([...tpm.kinds].sort(), ['RangeError', 'TypeError'])
})

test('every plain Napi::Error in the C++ gets a code (no uncoded error reaches TypeScript)', () => {
  for (const f of ccFiles) {
    const s = scan(f)
    assert.ok(s.plainErrors <= s.codeSets, `${f}: ${s.plainErrors} Error::New, ${s.codeSets} codes`)
  }
})

test('every code the TPM addon sets maps to a SpiffeEdgeError subclass with that code and a remedy', () => {
  const { codes } = union(tpmFiles)
  for (const code of codes) {
    assert.ok(Object.hasOwn(NATIVE_ERROR_CODES, code), `${code} has no TypeScript mapping`)
    const raw = nativeShaped(code)
    assertMapped(fromNative(raw), raw, code)
  }
  // And the mapping names nothing the C++ no longer throws.
  assert.deepEqual(Object.keys(NATIVE_ERROR_CODES).sort(), [...codes].sort())
})

test('every error class the TPM addon throws (its argument checks) maps to ERR_TPM_ARGUMENT', () => {
  const { kinds } = union(tpmFiles)
  assert.deepEqual([...kinds].sort(), [...NATIVE_ERROR_KINDS].sort())
  for (const kind of kinds) {
    const raw = kind === 'TypeError' ? new TypeError('argument 0') : new RangeError('argument 0')
    const mapped = fromNative(raw)
    assertMapped(mapped, raw, 'ERR_TPM_ARGUMENT')
    assert.ok(mapped instanceof TpmArgumentError && mapped.kind === kind)
  }
})

test('every code and error class the peercred addon throws maps to PeerCredError', () => {
  const s = scan('peercred.cc')
  assert.deepEqual([...s.codes].sort(), [...PEERCRED_ERROR_CODES].sort())
  for (const code of s.codes) {
    const raw = nativeShaped(code)
    const mapped = fromPeerCredNative(raw)
    assertMapped(mapped, raw, code)
    assert.ok(mapped instanceof PeerCredError && mapped.errno === 9)
  }
  assert.deepEqual([...s.kinds], ['TypeError'])
  const raw = new TypeError('peerCred(fd) takes a file descriptor')
  assertMapped(fromPeerCredNative(raw), raw, 'ERR_PEERCRED')
})

test('real addon errors arrive mapped: peerCred on a bad descriptor and a non-number', () => {
  const binding = loadPeerCred()
  assert.throws(
    () => binding.peerCred(-1),
    (e: unknown) =>
      e instanceof PeerCredError && e.code === 'ERR_PEERCRED' && e.errno === 9 && !!e.remedy,
  )
  assert.throws(
    () => binding.peerCred('3' as unknown as number),
    (e: unknown) => e instanceof PeerCredError && e.errno === undefined,
  )
})

test('real addon errors arrive mapped: openContext with a non-string is ERR_TPM_ARGUMENT', async () => {
  loadNative() // the addon must be built; a missing one fails here, not as a pass
  await assert.rejects(
    TpmContext.open(42 as unknown as string),
    (e: unknown) => e instanceof TpmArgumentError && e.kind === 'TypeError' && !!e.remedy,
  )
})
