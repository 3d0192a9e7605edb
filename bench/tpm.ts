/**
 * TPM operation latency through our addon, against the same operation through tpm2-tools in the
 * same run, on one swtpm; and pure-TypeScript quote verification throughput against a bare
 * signature verification of the same quote.
 *
 * The tools pay a process start and a context load per call; that is the cost a shell- or
 * exec-based agent would pay, which is the baseline this addon replaces.
 *
 * Run: npm run build && node dist/bench/tpm.js   (BENCH_N sets addon iterations, default 40)
 */
import { execFileSync } from 'node:child_process'
import { randomBytes, verify } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startSwtpm } from '../hardware-sim/swtpm.js'
import { TPM_ALG } from '../src/tpm/constants.js'
import { TpmContext } from '../src/tpm/context.js'
import { encodeCredentialFile, makeCredential } from '../src/tpm/credential.js'
import { createAk, createSigningKey, openEk, openSrk } from '../src/tpm/keys.js'
import { parsePcrSpec } from '../src/tpm/structures/pcr.js'
import { publicKeyObject } from '../src/tpm/structures/public.js'
import { ecdsaToDer, parseSignature } from '../src/tpm/structures/signature.js'
import { verifyQuote } from '../src/tpm/verify.js'

const N = Number(process.env.BENCH_N ?? 40)
const NT = Math.max(5, Math.floor(N / 3))

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

async function timeAsync(n: number, fn: () => Promise<unknown>): Promise<number> {
  const xs: number[] = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    await fn()
    xs.push(performance.now() - t)
  }
  return median(xs)
}

function timeSync(n: number, fn: () => void, after?: () => void): number {
  const xs: number[] = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    fn()
    xs.push(performance.now() - t)
    after?.()
  }
  return median(xs)
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-'))
  try {
    await using sim = await startSwtpm()
    const env = { ...process.env, TPM2TOOLS_TCTI: sim.tcti }
    const tool = (cmd: string, args: string[]) =>
      execFileSync(cmd, args, { env, stdio: 'pipe', cwd: dir })
    const f = (n: string) => join(dir, n)

    // Our side: SRK, AK, signing key, EK, all loaded once (as the agent keeps them).
    await using tpm = await TpmContext.open(sim.tcti)
    await using srk = await openSrk(tpm)
    const akBlob = await createAk(tpm, srk)
    const keyBlob = await createSigningKey(tpm, srk)
    await using ak = await tpm.loadKey(srk, akBlob)
    await using key = await tpm.loadKey(srk, keyBlob)
    // The tools load the same blobs under the same SRK, persisted at the TCG SRK handle.
    await tpm.evictControl(srk, 0x81000001)
    // swtpm has three object slots and a persistent EK takes one while in use: drop the SRK
    // (its children stay loaded).
    await srk.dispose()
    await using ek = await openEk(tpm, 'rsa-2048')
    const spec = 'sha256:0,1,7'
    const sel = parsePcrSpec(spec)
    const nonce = randomBytes(32)
    const secret = randomBytes(32)
    const cred = makeCredential(ek.public, ak.name, secret)

    const ours = {
      quote: await timeAsync(N, () => tpm.quote(ak, nonce, sel)),
      sign: await timeAsync(N, () => tpm.sign(key, nonce)),
      certify: await timeAsync(N, () => tpm.certify(key, ak, nonce)),
      activate: await timeAsync(N, () =>
        tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret),
      ),
      nvread: await timeAsync(N, () => tpm.nvReadAll(0x01c00002)),
    }

    // tpm2-tools side: the same keys, as blobs written by us and loaded into tool contexts.
    writeFileSync(f('ak.priv'), akBlob.private)
    writeFileSync(f('ak.pub'), akBlob.public)
    writeFileSync(f('key.priv'), keyBlob.private)
    writeFileSync(f('key.pub'), keyBlob.public)
    writeFileSync(f('digest'), nonce)
    writeFileSync(f('cred'), encodeCredentialFile(cred))
    await ak.dispose()
    await key.dispose()
    tool('tpm2_load', ['-C', '0x81000001', '-u', 'ak.pub', '-r', 'ak.priv', '-c', 'ak.ctx'])
    tool('tpm2_flushcontext', ['-t'])
    tool('tpm2_load', ['-C', '0x81000001', '-u', 'key.pub', '-r', 'key.priv', '-c', 'key.ctx'])
    tool('tpm2_flushcontext', ['-t'])
    const flush = () => {
      tool('tpm2_flushcontext', ['-t'])
      tool('tpm2_flushcontext', ['-s'])
    }
    const hexNonce = nonce.toString('hex')
    const tools = {
      quote: timeSync(
        NT,
        () =>
          tool('tpm2_quote', [
            '-c',
            'ak.ctx',
            '-l',
            spec,
            '-q',
            hexNonce,
            '-m',
            'q.msg',
            '-s',
            'q.sig',
            '-g',
            'sha256',
          ]),
        flush,
      ),
      sign: timeSync(
        NT,
        () => tool('tpm2_sign', ['-c', 'key.ctx', '-g', 'sha256', '-d', '-o', 'sig', 'digest']),
        flush,
      ),
      certify: timeSync(
        NT,
        () =>
          tool('tpm2_certify', [
            '-c',
            'key.ctx',
            '-C',
            'ak.ctx',
            '-g',
            'sha256',
            '-o',
            'attest',
            '-s',
            'csig',
          ]),
        flush,
      ),
      activate: timeSync(
        NT,
        () => {
          tool('tpm2_startauthsession', ['--policy-session', '-S', 's.ctx'])
          tool('tpm2_policysecret', ['-S', 's.ctx', '-c', 'e'])
          tool('tpm2_activatecredential', [
            '-c',
            'ak.ctx',
            '-C',
            '0x81010001',
            '-i',
            'cred',
            '-o',
            'out',
            '-P',
            'session:s.ctx',
          ])
          tool('tpm2_flushcontext', ['s.ctx'])
        },
        flush,
      ),
      nvread: timeSync(NT, () => tool('tpm2_nvread', ['0x1c00002', '-o', 'nv.der']), flush),
    }

    console.log(`median latency, ms (addon n=${N}, tpm2-tools n=${NT}), swtpm on loopback:`)
    console.log('  operation        addon   tpm2-tools   tools/addon')
    for (const op of Object.keys(ours) as (keyof typeof ours)[]) {
      console.log(
        `  ${op.padEnd(14)} ${ours[op].toFixed(2).padStart(7)} ${tools[op].toFixed(2).padStart(12)} ${(tools[op] / ours[op]).toFixed(1).padStart(13)}x`,
      )
    }

    // Pure-TS verification: a full verifyQuote against a bare signature check of the same quote.
    await using srk2 = await openSrk(tpm)
    await using ak2 = await tpm.loadKey(srk2, akBlob)
    const selection = parsePcrSpec(spec)
    const q = await tpm.quote(ak2, nonce, selection)
    const pcrValues = await tpm.pcrRead(selection)
    const akKey = publicKeyObject(ak2.public)
    const sig = parseSignature(q.signature)
    if (sig.sigAlg !== TPM_ALG.ECDSA) throw new Error('expected an ECDSA AK')
    const der = ecdsaToDer(sig)
    const rate = (fn: () => void) => {
      const end = performance.now() + 1000
      let n = 0
      while (performance.now() < end) {
        fn()
        n++
      }
      return n
    }
    const full = rate(() =>
      verifyQuote({
        akPublic: ak2.public,
        message: q.message,
        signature: q.signature,
        nonce,
        pcrValues,
      }),
    )
    const bare = rate(() => verify('sha256', q.message, akKey, der))
    console.log(
      `quote verification on one core: verifyQuote ${full}/s, bare ECDSA verify ${bare}/s, ratio ${(full / bare).toFixed(2)}`,
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
