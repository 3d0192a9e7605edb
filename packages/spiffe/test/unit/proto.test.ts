import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'
import protobuf from 'protobufjs'
import { repoRoot } from '../../../../test/helpers/exec.js'
import { workloadRoot } from '../../src/workload/proto.js'

test('the embedded Workload API messages match the spec proto field by field', () => {
  const spec = protobuf.loadSync(join(repoRoot, 'proto', 'workload.proto'))
  const ours = workloadRoot()
  const names = ours.nestedArray.filter((n) => n instanceof protobuf.Type).map((n) => n.name)
  assert.ok(names.length >= 12, names.join())
  for (const name of names) {
    const a = ours.lookupType(name)
    const b = spec.lookupType(name)
    const shape = (t: protobuf.Type) =>
      t.fieldsArray
        .map((f) => ({
          name: f.name,
          id: f.id,
          type: f.type,
          repeated: f.repeated,
          map: f instanceof protobuf.MapField ? f.keyType : null,
        }))
        .sort((x, y) => x.id - y.id)
    assert.deepEqual(shape(a), shape(b), name)
  }
})
