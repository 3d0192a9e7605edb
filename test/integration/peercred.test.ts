import assert from 'node:assert/strict'
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createConnection, createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { silentLog } from '../../src/common/log.js'
import { loadPeerCred, PeerCredUnavailableError } from '../../src/native/peercred.js'
import { adminCall } from '../../src/server/admin-client.js'
import { parseServerConfig } from '../../src/server/config.js'
import { startServer } from '../../src/server/server.js'
import { cliPath, repoRoot, run } from '../helpers/exec.js'
import { startTestServer } from '../helpers/server.js'

function socketPair(): Promise<{ server: Socket; client: Socket; close: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-peercred-'))
  const path = join(dir, 's.sock')
  return new Promise((resolve, reject) => {
    const srv = createServer((server) => {
      resolve({
        server,
        client,
        close: () => {
          server.destroy()
          client.destroy()
          srv.close()
          rmSync(dir, { recursive: true, force: true })
        },
      })
    })
    srv.once('error', reject)
    let client: Socket
    srv.listen(path, () => {
      client = createConnection(path)
    })
  })
}

const fdOf = (s: Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd

test('peerCred returns this process pid, uid, gid and supplementary groups', async () => {
  const { server, close } = await socketPair()
  try {
    const cred = loadPeerCred().peerCred(fdOf(server))
    assert.equal(cred.pid, process.pid)
    assert.equal(cred.uid, process.getuid!())
    assert.equal(cred.gid, process.getgid!())
    // SO_PEERGROUPS: the kernel's supplementary list, as /proc shows it for this process.
    const line = /^Groups:(.*)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!
    const proc = line.trim().split(/\s+/).filter(Boolean).map(Number)
    assert.deepEqual([...(cred.groups ?? [])].sort(), proc.sort())
  } finally {
    close()
  }
})

test('peerCred on a descriptor that is not a socket is ERR_PEERCRED', () => {
  assert.throws(() => loadPeerCred().peerCred(-1), { code: 'ERR_PEERCRED' })
  assert.throws(() => loadPeerCred().peerCred(0x7fff), { code: 'ERR_PEERCRED' })
})

test('the peercred addon does not link tpm2-tss (a server or join-token agent needs no TPM stack)', async () => {
  const r = await run('ldd', [join(repoRoot, 'build', 'Release', 'peercred.node')])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /libc\.so/)
  assert.doesNotMatch(r.stdout, /tss2/)
  const tpm = await run('ldd', [join(repoRoot, 'build', 'Release', 'tpm_native.node')])
  assert.match(tpm.stdout, /libtss2-esys/, 'the check itself sees tss2 where it is linked')
})

test('a missing peercred addon is ERR_PEERCRED_UNAVAILABLE naming the path', () => {
  assert.throws(
    () => loadPeerCred({ path: '/nonexistent/peercred.node' }),
    (e: unknown) =>
      e instanceof PeerCredUnavailableError &&
      e.code === 'ERR_PEERCRED_UNAVAILABLE' &&
      e.searched[0] === '/nonexistent/peercred.node' &&
      /build:native/.test(e.remedy ?? ''),
  )
})

function serverConfig(dir: string) {
  const text = `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\n[plugins.NodeAttestor.join_token]\n`
  writeFileSync(join(dir, 'server.conf'), text)
  return parseServerConfig(text, join(dir, 'server.conf'))
}

test('the admin API refuses every call when caller credentials cannot be read', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-server-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const server = await startServer(serverConfig(dir), {
    log: silentLog,
    peerCred: () => {
      throw Object.assign(new Error('SO_PEERCRED failed: injected'), { code: 'ERR_PEERCRED' })
    },
  })
  t.after(() => server.close())
  await assert.rejects(adminCall(server.adminSocket, 'POST', '/v1/tokens', {}), {
    code: 'ERR_AUTH',
  })
  await assert.rejects(adminCall(server.adminSocket, 'GET', '/v1/entries'), { code: 'ERR_AUTH' })
})

test('the server refuses to start when it cannot check admin callers', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-server-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const prev = process.env.SPIFFE_EDGE_PEERCRED
  process.env.SPIFFE_EDGE_PEERCRED = join(dir, 'missing-peercred.node')
  t.after(() => {
    if (prev === undefined) delete process.env.SPIFFE_EDGE_PEERCRED
    else process.env.SPIFFE_EDGE_PEERCRED = prev
  })
  await assert.rejects(startServer(serverConfig(dir), { log: silentLog }), {
    code: 'ERR_PEERCRED_UNAVAILABLE',
  })

  // The CLI says why and how to fix it, and exits non-zero (with the TPM addon missing too).
  const r = await run(
    process.execPath,
    [
      cliPath,
      'server',
      'run',
      '--config',
      join(dir, 'server.conf'),
      '--data-dir',
      dir,
      '--port',
      '0',
    ],
    {
      env: {
        ...process.env,
        SPIFFE_EDGE_PEERCRED: join(dir, 'missing-peercred.node'),
        SPIFFE_EDGE_NATIVE: join(dir, 'missing-tpm.node'),
      },
    },
  )
  assert.notEqual(r.code, 0)
  assert.match(r.stderr, /ERR_PEERCRED_UNAVAILABLE/)
  assert.match(r.stderr, /build:native/)
  assert.doesNotMatch(r.stdout, /listening/)
})

/** One admin call as another user (setpriv), from a child node process; prints the status. */
async function adminAs(socketPath: string, setprivArgs: string[]): Promise<string> {
  const script = `
    const http = require('node:http')
    const req = http.request({ socketPath: ${JSON.stringify(socketPath)}, path: '/v1/entries', method: 'GET' }, (res) => {
      res.resume(); res.on('end', () => console.log(String(res.statusCode)))
    })
    req.on('error', (e) => console.log(e.code))
    req.end()`
  const r = await run('setpriv', [...setprivArgs, process.execPath, '-e', script])
  assert.equal(r.code, 0, r.stderr)
  return r.stdout.trim()
}

test('admin_socket_group admits supplementary members, not only the primary group', async (t) => {
  // The socket's directory must be reachable by the other user; the data dir is 0700.
  const sockDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-admin-'))
  chmodSync(sockDir, 0o755)
  t.after(() => rmSync(sockDir, { recursive: true, force: true }))
  const socketPath = join(sockDir, 'admin.sock')
  await using _s = await startTestServer({
    extraToml: `admin_socket = "${socketPath}"\nadmin_socket_group = "100"`,
  })
  const nobody = ['--reuid=65534', '--regid=65534']
  // Member through a supplementary group only (the usual case: `usermod -aG`).
  assert.equal(await adminAs(socketPath, [...nobody, '--groups=100']), '200')
  // Member through the primary group.
  assert.equal(await adminAs(socketPath, ['--reuid=65534', '--regid=100', '--clear-groups']), '200')
  // Not a member: the socket mode (0660) already refuses the connection.
  assert.match(await adminAs(socketPath, [...nobody, '--clear-groups']), /EACCES|403/)
})

test('a caller outside root, the server user and the group gets 403 even when it can connect', async (t) => {
  const sockDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-admin-'))
  chmodSync(sockDir, 0o755)
  t.after(() => rmSync(sockDir, { recursive: true, force: true }))
  const socketPath = join(sockDir, 'admin.sock')
  await using _s = await startTestServer({ extraToml: `admin_socket = "${socketPath}"` })
  // Open the file mode wide so only the credential check stands between the caller and the API.
  chmodSync(socketPath, 0o666)
  assert.equal(
    await adminAs(socketPath, ['--reuid=65534', '--regid=65534', '--clear-groups']),
    '403',
  )
})

test('the admin socket directory must be ours: another owner or a world-writable one is refused', async (t) => {
  for (const [label, prepare] of [
    ['owned by another uid', (d: string) => chownSync(d, 65534, 65534)],
    ['writable by others', (d: string) => chmodSync(d, 0o777)],
  ] as const) {
    const sockDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-admin-'))
    t.after(() => rmSync(sockDir, { recursive: true, force: true }))
    chmodSync(sockDir, 0o755)
    prepare(sockDir)
    await assert.rejects(
      startTestServer({ extraToml: `admin_socket = "${join(sockDir, 'admin.sock')}"` }),
      (e: Error & { code?: string }) =>
        e.code === 'ERR_ADMIN_SOCKET' && e.message.includes(sockDir),
      label,
    )
  }
})
