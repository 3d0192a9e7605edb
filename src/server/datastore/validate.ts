/**
 * Cheap input checks shared by every datastore implementation, so SQLite and a future PostgreSQL
 * store refuse exactly the same inputs. Callers may be plain JS (config files, admin API), so the
 * runtime types are checked too. Everything refused is ERR_DATASTORE_INVALID.
 */
import { SpiffeEdgeError } from '../../errors.js'
import type { AttestedNode, EntryInput, JoinTokenInput, Selector } from './types.js'

const INVALID_REMEDY = 'fix the named field and retry; the datastore stored nothing'
const INT32_MAX = 2 ** 31 - 1
// SPIFFE ID grammar (SPIFFE-ID.md §2): lowercase trust domain, path segments of [A-Za-z0-9._-].
const SPIFFE_ID = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/

export function invalid(message: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_INVALID', message, { remedy: INVALID_REMEDY })
}

export function checkSpiffeId(field: string, v: unknown): asserts v is string {
  if (typeof v !== 'string' || v.length > 2048 || !SPIFFE_ID.test(v)) {
    throw invalid(`${field} must be a SPIFFE ID (spiffe://<trust-domain>/<path>), got ${show(v)}`)
  }
  if (v.split('/').some((s, i) => i > 2 && (s === '.' || s === '..'))) {
    throw invalid(`${field} must not contain '.' or '..' path segments, got ${show(v)}`)
  }
}

export function checkNonEmpty(field: string, v: unknown): asserts v is string {
  if (typeof v !== 'string' || v.length === 0) {
    throw invalid(`${field} must be a non-empty string, got ${show(v)}`)
  }
}

/** Unix seconds or TTLs: safe integers (negative allowed only where `min` says so). */
export function checkInt(field: string, v: unknown, min = Number.MIN_SAFE_INTEGER): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    const what = min === 0 ? 'a non-negative integer' : 'an integer'
    throw invalid(`${field} must be ${what}, got ${show(v)}`)
  }
}

function checkBool(field: string, v: unknown): void {
  if (typeof v !== 'boolean') throw invalid(`${field} must be a boolean, got ${show(v)}`)
}

export function checkSelectors(field: string, v: unknown, allowEmpty: boolean): void {
  if (!Array.isArray(v)) throw invalid(`${field} must be an array of {type, value}`)
  // An entry with no selectors would match every workload under its parent.
  if (!allowEmpty && v.length === 0) throw invalid(`${field} must contain at least one selector`)
  const seen = new Set<string>()
  for (const [i, s] of (v as unknown[]).entries()) {
    const sel = s as Partial<Selector> | null
    if (typeof sel !== 'object' || sel === null) throw invalid(`${field}[${i}] must be an object`)
    checkNonEmpty(`${field}[${i}].type`, sel.type)
    checkNonEmpty(`${field}[${i}].value`, sel.value)
    // 'type:value' is the wire/CLI form and values may contain ':' (unix:uid:0), types may not.
    if (sel.type.includes(':')) throw invalid(`${field}[${i}].type must not contain ':'`)
    const key = `${sel.type}:${sel.value}`
    if (seen.has(key)) throw invalid(`${field} lists ${show(key)} twice`)
    seen.add(key)
  }
}

function checkStringList(field: string, v: unknown): void {
  if (!Array.isArray(v)) throw invalid(`${field} must be an array of strings`)
  const seen = new Set<string>()
  for (const [i, s] of (v as unknown[]).entries()) {
    checkNonEmpty(`${field}[${i}]`, s)
    if (seen.has(s)) throw invalid(`${field} lists ${show(s)} twice`)
    seen.add(s)
  }
}

export function validateEntryInput(e: EntryInput): void {
  if (typeof e !== 'object' || e === null) throw invalid('entry must be an object')
  checkSpiffeId('spiffeId', e.spiffeId)
  checkSpiffeId('parentId', e.parentId)
  checkSelectors('selectors', e.selectors, false)
  checkInt('x509SvidTtl', e.x509SvidTtl, 0)
  checkInt('jwtSvidTtl', e.jwtSvidTtl, 0)
  // SPIRE carries TTLs as int32 seconds; larger values could not round-trip through its API.
  if (e.x509SvidTtl > INT32_MAX || e.jwtSvidTtl > INT32_MAX) {
    throw invalid(`TTLs must be at most ${INT32_MAX} seconds`)
  }
  checkStringList('dnsNames', e.dnsNames)
  if (typeof e.hint !== 'string') throw invalid(`hint must be a string, got ${show(e.hint)}`)
  checkStringList('federatesWith', e.federatesWith)
  checkBool('admin', e.admin)
  checkBool('downstream', e.downstream)
  if (e.expiresAt !== null) checkInt('expiresAt', e.expiresAt)
}

export function validateAttestedNode(n: AttestedNode): void {
  if (typeof n !== 'object' || n === null) throw invalid('attested node must be an object')
  checkSpiffeId('spiffeId', n.spiffeId)
  checkNonEmpty('attestorType', n.attestorType)
  checkSelectors('selectors', n.selectors, true)
  if (typeof n.certSerial !== 'string') throw invalid('certSerial must be a string')
  if (n.previousCertSerial !== undefined && typeof n.previousCertSerial !== 'string')
    throw invalid('previousCertSerial must be a string')
  checkInt('certNotAfter', n.certNotAfter)
  checkBool('canReattest', n.canReattest)
  checkBool('banned', n.banned)
  checkInt('createdAt', n.createdAt)
  checkInt('updatedAt', n.updatedAt)
}

export function validateJoinToken(t: JoinTokenInput): void {
  if (typeof t !== 'object' || t === null) throw invalid('join token must be an object')
  checkNonEmpty('tokenHash', t.tokenHash)
  if (t.spiffeId !== undefined) checkSpiffeId('spiffeId', t.spiffeId)
  checkInt('expiresAt', t.expiresAt)
}

export function checkJson(field: string, v: unknown): void {
  if (typeof v !== 'string') throw invalid(`${field} must be a JSON string`)
  try {
    JSON.parse(v)
  } catch (err) {
    throw invalid(`${field} is not valid JSON: ${(err as Error).message}`)
  }
}

/** Canonical selector-set key: order-independent, unambiguous (JSON escapes separators). */
export function selectorKey(selectors: readonly Selector[]): string {
  const pairs = selectors.map((s) => [s.type, s.value] as const)
  pairs.sort((a, b) => cmp(a[0], b[0]) || cmp(a[1], b[1]))
  return JSON.stringify(pairs)
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

function show(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v) : String(v)
  return s.length > 80 ? `${s.slice(0, 77)}...` : s
}
