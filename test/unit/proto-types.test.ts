import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'node:test'
import { packageRoot } from '../../src/common/package-root.js'
import { codec } from '../../src/transport/proto.js'

test('the generated message types match the .proto files', () => {
  const r = spawnSync(
    process.execPath,
    [join(packageRoot(), 'scripts', 'gen-proto-types.mjs'), '--check'],
    { encoding: 'utf8' },
  )
  assert.equal(r.status, 0, r.stderr)
})

test('decoded messages carry every scalar; unset oneof members and messages are absent', () => {
  const challenge = codec.attestResponse.decode(
    codec.attestResponse.encode({ challenge: new Uint8Array([1]) }),
  )
  assert.deepEqual(Object.keys(challenge), ['challenge'])
  const result = codec.attestResponse.decode(codec.attestResponse.encode({ result: {} }))
  assert.equal(result.result?.reattestable, false)
  assert.deepEqual(result.result?.selectors, [])
  assert.equal(result.result?.svid, null)
  const renew = codec.response('RenewAgent').decode(new Uint8Array())
  assert.equal(renew.svid, null)
})
