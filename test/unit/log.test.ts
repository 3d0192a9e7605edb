import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ConfigReader } from '../../src/common/config.js'
import { Logger } from '../../src/common/log.js'
import { SpiffeEdgeError } from '../../src/errors.js'

test('text format is logrus-style key=value, JSON is one object a line', () => {
  const lines: string[] = []
  const text = new Logger({ level: 'info', format: 'text' }, 'agent', (l) => lines.push(l))
  text.log('info', 'agent started', { socket: '/tmp/a b/api.sock', n: 3 })
  assert.match(
    lines[0]!,
    /^time="[^"]+" level=info component=agent msg="agent started" socket="\/tmp\/a b\/api.sock" n=3\n$/,
  )
  const json = new Logger({ level: 'info', format: 'json' }, 'agent', (l) => lines.push(l))
  json.log('warn', 'x', { a: 1 })
  assert.deepEqual(
    { ...JSON.parse(lines[1]!), time: undefined },
    { time: undefined, level: 'warn', component: 'agent', msg: 'x', a: 1 },
  )
})

test('the level changes at run time and resets to the configured one', () => {
  const lines: string[] = []
  const l = new Logger({ level: 'warn', format: 'json' }, 's', (x) => lines.push(x))
  l.log('info', 'hidden')
  l.setLevel('debug')
  l.log('debug', 'shown')
  assert.equal(l.level, 'debug')
  l.resetLevel()
  l.log('info', 'hidden again')
  assert.equal(l.level, 'warn')
  assert.equal(lines.length, 1)
})

test('log_file: appended, 0640, reopened after logrotate moved it; a symlink is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-log-'))
  try {
    const file = join(dir, 'agent.log')
    const l = new Logger({ level: 'info', format: 'json', file }, 'agent')
    l.log('info', 'one')
    assert.equal(statSync(file).mode & 0o777, 0o640)
    renameSync(file, `${file}.1`)
    l.log('info', 'two') // still the old (rotated) file until reopened
    l.reopen()
    l.log('info', 'three')
    l.close()
    assert.match(readFileSync(`${file}.1`, 'utf8'), /"one"[\s\S]*"two"/)
    assert.match(readFileSync(file, 'utf8'), /"three"/)
    assert.doesNotMatch(readFileSync(file, 'utf8'), /"two"/)
    symlinkSync('/etc/passwd', join(dir, 'link.log'))
    assert.throws(
      () => new Logger({ level: 'info', format: 'json', file: join(dir, 'link.log') }, 'agent'),
      (e: unknown) => e instanceof SpiffeEdgeError && e.code === 'ERR_LOG_FILE',
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a full disk loses log lines, never the process: said once on stderr', () => {
  const err: string[] = []
  const l = new Logger({ level: 'info', format: 'json', file: '/dev/full' }, 'agent', (x) =>
    err.push(x),
  )
  for (let i = 0; i < 5; i++) assert.doesNotThrow(() => l.log('info', 'x'))
  l.close()
  assert.equal(err.length, 1)
  assert.match(err[0]!, /cannot write \/dev\/full/)
})

test('log_level in any case (SPIRE writes "DEBUG"), log_format json|text, log_file relative to the config', () => {
  const r = new ConfigReader('/etc/spiffe-edge')
  assert.deepEqual(
    r.log({ log_level: 'DEBUG', log_format: 'Text', log_file: 'agent.log' }, 'agent'),
    {
      level: 'debug',
      format: 'text',
      file: '/etc/spiffe-edge/agent.log',
    },
  )
  assert.deepEqual(r.log(undefined, 'agent'), { level: 'info', format: 'json' })
  r.log({ log_level: 'loud', log_format: 'xml' }, 'agent')
  assert.equal(r.problems.length, 2)
  assert.ok(r.problems.every((p) => /any case/.test(p)))
})
