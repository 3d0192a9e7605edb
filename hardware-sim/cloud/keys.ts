/**
 * The simulated clouds' signing material, made once per state dir and kept (never overwritten):
 * AWS: an RSA-2048 key and a self-signed certificate (the stand-in for AWS's published regional
 * certificate); GCP and Azure: an RSA-2048 key and the JWKS a server is configured to trust (the
 * stand-in for Google's oauth2/v3/certs and a tenant's discovery keys).
 */
import { execFileSync } from 'node:child_process'
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { calculateJwkThumbprint } from 'jose'
import { findBinary } from '../process.js'

export type CloudKind = 'aws' | 'gcp' | 'azure'

export interface CloudKeys {
  readonly privateKey: KeyObject
  readonly keyFile: string
  /** AWS: the certificate PEM file; GCP/Azure: the JWKS JSON file. */
  readonly trustFile: string
  /** JWT key id (GCP/Azure). */
  readonly kid: string
}

function loadOrCreateKey(file: string): KeyObject {
  if (!existsSync(file)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
    try {
      // 'wx': a key file is never overwritten; a concurrent creator wins and we read theirs.
      writeFileSync(file, pem, { mode: 0o600, flag: 'wx' })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
  }
  return createPrivateKey(readFileSync(file))
}

export async function ensureCloudKeys(stateDir: string, kind: CloudKind): Promise<CloudKeys> {
  const keyFile = join(stateDir, `${kind}-signing-key.pem`)
  const privateKey = loadOrCreateKey(keyFile)
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' })
  const kid = (await calculateJwkThumbprint(jwk as { kty: string; n: string; e: string })).slice(
    0,
    16,
  )
  if (kind === 'aws') {
    const trustFile = join(stateDir, 'aws-certificate.pem')
    if (!existsSync(trustFile)) {
      const tmp = `${trustFile}.${process.pid}.tmp`
      execFileSync(
        findBinary('openssl', 'openssl'),
        [
          'req',
          '-x509',
          '-new',
          '-key',
          keyFile,
          '-sha256',
          '-days',
          '3650',
          '-subj',
          '/C=US/ST=Washington State/L=Seattle/O=spiffe-edge hardware-sim AWS',
          '-out',
          tmp,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      )
      try {
        writeFileSync(trustFile, readFileSync(tmp), { mode: 0o644, flag: 'wx' })
      } finally {
        rmSync(tmp, { force: true })
      }
    }
    return { privateKey, keyFile, trustFile, kid }
  }
  const trustFile = join(stateDir, `${kind}-jwks.json`)
  if (!existsSync(trustFile)) {
    const keys = { keys: [{ ...jwk, kid, alg: 'RS256', use: 'sig' }] }
    writeFileSync(trustFile, `${JSON.stringify(keys, null, 2)}\n`, { mode: 0o644, flag: 'wx' })
  }
  return { privateKey, keyFile, trustFile, kid }
}
