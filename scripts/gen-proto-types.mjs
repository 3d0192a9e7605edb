// Generates TypeScript interfaces for the messages of our .proto files, so the types the code
// uses cannot drift from the wire definition. The runtime codec stays protobufjs (loaded from the
// same .proto); this only emits the shapes that its toObject({longs: Number, defaults, arrays})
// produces. `node scripts/gen-proto-types.mjs` rewrites the files; `--check` fails when a
// committed file is stale (the unit tests run it).
import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** The .proto files we own, and where their types go. */
export const TARGETS = [
  { proto: 'proto/spiffe_edge/node/v1/node.proto', out: 'src/transport/gen/node.ts' },
  { proto: 'proto/workload.proto', out: 'src/agent/workload-api/gen/workload.ts' },
]

const SCALARS = {
  double: 'number',
  float: 'number',
  int32: 'number',
  uint32: 'number',
  sint32: 'number',
  fixed32: 'number',
  sfixed32: 'number',
  // int64s are read as numbers (longs: Number): timestamps and revisions stay far below 2^53.
  int64: 'number',
  uint64: 'number',
  sint64: 'number',
  fixed64: 'number',
  sfixed64: 'number',
  bool: 'boolean',
  string: 'string',
  bytes: 'Uint8Array',
}

function tsName(type, pkg) {
  // Nested messages become Outer_Inner, as protoc-gen-es names them.
  return type.fullName.slice(pkg ? pkg.length + 2 : 1).replaceAll('.', '_')
}

function fieldType(field, pkg) {
  field.resolve()
  if (field.map) {
    const v = field.resolvedType ? tsName(field.resolvedType, pkg) : SCALARS[field.type]
    return `Record<string, ${v}>`
  }
  let t
  if (field.resolvedType instanceof protobuf.Enum) t = 'number'
  // google.protobuf.Struct is JSON on our side of the codec.
  else if (field.resolvedType?.fullName === '.google.protobuf.Struct') t = 'Record<string, unknown>'
  else if (field.resolvedType) t = tsName(field.resolvedType, pkg)
  else t = SCALARS[field.type]
  if (!t)
    throw new Error(`gen-proto-types: no TypeScript type for ${field.fullName} (${field.type})`)
  return field.repeated ? `${t}[]` : t
}

function* messages(ns) {
  for (const nested of ns.nestedArray) {
    if (nested instanceof protobuf.Type) {
      yield nested
      yield* messages(nested)
    } else if (nested instanceof protobuf.Namespace) yield* messages(nested)
  }
}

function camel(name) {
  return name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase())
}

export function generate(protoPath) {
  const r = new protobuf.Root()
  // Imports other than google/protobuf/* resolve beside the importing file (absolute stays).
  r.resolvePath = (origin, target) =>
    target.startsWith('/') || target.startsWith('google/protobuf/')
      ? target
      : join(dirname(origin), target)
  r.loadSync(join(root, protoPath), { keepCase: true })
  r.resolveAll()
  const lines = [
    `// Generated from ${protoPath} by scripts/gen-proto-types.mjs: do not edit.`,
    '// Singular message fields and oneof members may be absent on the wire, so they are optional.',
    '',
  ]
  for (const t of messages(r)) {
    const owner = (() => {
      let p = t.parent
      while (p instanceof protobuf.Type) p = p.parent
      return p.fullName.replace(/^\./, '')
    })()
    if (owner.startsWith('google.protobuf')) continue
    if (t.fieldsArray.length === 0) {
      lines.push(`export type ${tsName(t, owner)} = Record<string, never>`, '')
      continue
    }
    lines.push(`export interface ${tsName(t, owner)} {`)
    for (const f of t.fieldsArray) {
      const optional =
        f.partOf !== null || (!f.repeated && !f.map && f.resolvedType instanceof protobuf.Type)
      lines.push(
        `  ${camel(f.name)}${optional ? '?' : ''}: ${fieldType(f, owner)}${optional ? ' | null' : ''}`,
      )
    }
    lines.push('}', '')
  }
  return `${lines.join('\n').trimEnd()}\n`
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes('--check')
  let stale = 0
  for (const { proto, out } of TARGETS) {
    const text = generate(proto)
    const path = join(root, out)
    let old = ''
    try {
      old = readFileSync(path, 'utf8')
    } catch {}
    if (old === text) continue
    if (check) {
      console.error(`gen-proto-types: ${out} is stale; run node scripts/gen-proto-types.mjs`)
      stale++
    } else writeFileSync(path, text)
  }
  process.exit(stale ? 1 : 0)
}
