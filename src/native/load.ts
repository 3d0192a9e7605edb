import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join, resolve } from 'node:path'
import { packageRoot } from '../common/package-root.js'
import { NativeUnavailableError } from '../errors.js'
import type { NativeBinding } from './types.js'

/** ABI the TypeScript side expects; bumped together with native/src/addon.cc. */
const EXPECTED_ABI = 3

export interface LoadNativeOptions {
  /** An explicit path to tpm_native.node (also SPIFFE_EDGE_NATIVE in the environment). */
  readonly path?: string
  /** The package root to search under (defaults to this checkout / install). */
  readonly root?: string
}

let cached: NativeBinding | undefined

/** Where the addon may be, in search order: explicit path, Release build, Debug build. */
export function nativeCandidates(options: LoadNativeOptions = {}): string[] {
  const explicit = options.path ?? process.env.SPIFFE_EDGE_NATIVE
  if (explicit) return [resolve(explicit)]
  const root = options.root ?? packageRoot()
  return [
    join(root, 'build', 'Release', 'tpm_native.node'),
    join(root, 'build', 'Debug', 'tpm_native.node'),
  ]
}

/**
 * Loads the TPM addon. Lazy by design: only code that talks to a TPM calls this, so the server,
 * cloud and join-token paths never need tpm2-tss. Failure is an ERR_NATIVE_UNAVAILABLE that lists
 * what was searched and why loading failed, never a bare MODULE_NOT_FOUND.
 */
export function loadNative(options: LoadNativeOptions = {}): NativeBinding {
  const useCache = options.path === undefined && options.root === undefined
  if (useCache && cached) return cached
  // tpm2-tss logs every failed TCTI probe to stderr; our errors already carry the decoded rc.
  process.env.TSS2_LOG ??= 'all+NONE'
  const searched = nativeCandidates(options)
  const require = createRequire(import.meta.url)
  let lastError: unknown = new Error('no build found; the addon has not been built')
  for (const candidate of searched) {
    if (!existsSync(candidate)) continue
    try {
      const binding = require(candidate) as NativeBinding
      if (binding.abiVersion !== EXPECTED_ABI) {
        lastError = new Error(
          `${candidate} has ABI ${binding.abiVersion}, expected ${EXPECTED_ABI}; rebuild it`,
        )
        continue
      }
      if (useCache) cached = binding
      return binding
    } catch (err) {
      // dlopen errors name the missing shared library (e.g. libtss2-esys.so.0): keep them.
      lastError = err
    }
  }
  throw new NativeUnavailableError(searched, lastError)
}
