import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, isAbsolute, join } from 'node:path'
import { test } from 'node:test'
import protobuf from 'protobufjs'
import { parse } from 'yaml'
import { repoRoot } from '../helpers/exec.js'

/**
 * No Envoy binary runs here, so the bootstrap in docs/envoy.md is checked against Envoy's own
 * protos instead: every key must be a field of its message (by proto or JSON name), every `@type`
 * a known message, every enum value a member. A typo or a field Envoy does not have fails.
 */
const req = createRequire(import.meta.url)
const xds = dirname(req.resolve('@grpc/grpc-js-xds/package.json'))
const dirs = ['envoy-api', 'xds', 'protoc-gen-validate', 'googleapis']
  .map((d) => join(xds, 'deps', d))
  .concat([dirname(req.resolve('protobufjs/package.json'))])
const E = 'envoy/extensions'
const FILES = [
  'envoy/config/bootstrap/v3/bootstrap.proto',
  `${E}/transport_sockets/tls/v3/tls.proto`,
  `${E}/upstreams/http/v3/http_protocol_options.proto`,
  `${E}/filters/network/http_connection_manager/v3/http_connection_manager.proto`,
  `${E}/filters/http/router/v3/router.proto`,
]

function envoyProtos(): protobuf.Root {
  const root = new protobuf.Root()
  root.resolvePath = (_o, t) => {
    if (isAbsolute(t)) return t
    for (const d of dirs) if (existsSync(join(d, t))) return join(d, t)
    return t
  }
  root.loadSync(FILES, { keepCase: true })
  root.resolveAll()
  return root
}

/** Well-known types written as scalars in YAML/JSON. */
const SCALAR_WKT = new Set([
  'google.protobuf.Duration',
  'google.protobuf.UInt32Value',
  'google.protobuf.BoolValue',
  'google.protobuf.StringValue',
])

function check(root: protobuf.Root, type: protobuf.Type, v: unknown, path: string): void {
  const full = type.fullName.slice(1)
  if (SCALAR_WKT.has(full)) return
  if (full === 'google.protobuf.Any') {
    const o = v as Record<string, unknown>
    const url = String(o['@type'] ?? '')
    assert.match(url, /^type\.googleapis\.com\//, `${path}: Any without @type`)
    const inner = root.lookupType(url.slice('type.googleapis.com/'.length))
    const { '@type': _, ...rest } = o
    check(root, inner, rest, `${path}<${inner.name}>`)
    return
  }
  assert.ok(
    typeof v === 'object' && v !== null && !Array.isArray(v),
    `${path}: must be a ${type.name}`,
  )
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    const field =
      type.fields[k] ??
      Object.values(type.fields).find((f) => (f.options?.json_name ?? camel(f.name)) === k)
    assert.ok(field, `${path}.${k}: ${type.name} has no such field`)
    const one = (x: unknown, p: string) => {
      const rt = field.resolvedType
      if (rt instanceof protobuf.Type) check(root, rt, x, p)
      else if (rt instanceof protobuf.Enum)
        assert.ok(String(x) in rt.values, `${p}: not a ${rt.name}`)
    }
    if (field.map) {
      assert.ok(typeof val === 'object' && val !== null, `${path}.${k}: must be a map`)
      for (const [mk, mv] of Object.entries(val)) one(mv, `${path}.${k}[${mk}]`)
    } else if (field.repeated) {
      assert.ok(Array.isArray(val), `${path}.${k}: must be a list`)
      for (const [i, x] of val.entries()) one(x, `${path}.${k}[${i}]`)
    } else one(val, `${path}.${k}`)
  }
}

const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())

test('the Envoy bootstrap in docs/envoy.md is valid against Envoy v3 protos and uses the agent socket', () => {
  const md = readFileSync(join(repoRoot, 'docs/envoy.md'), 'utf8')
  const blocks = [...md.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!)
  assert.equal(blocks.length, 1)
  const doc = parse(blocks[0]!) as Record<string, unknown>
  const root = envoyProtos()
  check(root, root.lookupType('envoy.config.bootstrap.v3.Bootstrap'), doc, 'bootstrap')
  // And it says what SDS needs: the agent cluster on the socket, SDS configs pointing at it.
  const text = blocks[0]!
  assert.match(text, /pipe:\n\s+path: \/tmp\/spiffe-edge-agent\/public\/api\.sock/)
  assert.equal((text.match(/cluster_name: spiffe_edge_agent \}/g) ?? []).length, 4)
  assert.match(text, /http2_protocol_options/)
})
