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
  /** GCP: the key of the service account the server calls the Compute API as. */
  readonly serviceAccount?: { readonly privateKey: KeyObject; readonly keyId: string }
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
  let serviceAccount: CloudKeys['serviceAccount']
  if (kind === 'gcp') {
    const sa = loadOrCreateKey(join(stateDir, 'gcp-service-account-key.pem'))
    const saJwk = createPublicKey(sa).export({ format: 'jwk' }) as {
      kty: string
      n: string
      e: string
    }
    serviceAccount = { privateKey: sa, keyId: (await calculateJwkThumbprint(saJwk)).slice(0, 40) }
  }
  const trustFile = join(stateDir, `${kind}-jwks.json`)
  if (!existsSync(trustFile)) {
    const keys = { keys: [{ ...jwk, kid, alg: 'RS256', use: 'sig' }] }
    writeFileSync(trustFile, `${JSON.stringify(keys, null, 2)}\n`, { mode: 0o644, flag: 'wx' })
  }
  return { privateKey, keyFile, trustFile, kid, ...(serviceAccount ? { serviceAccount } : {}) }
}

/**
 * The service-account key file a server's service_account_file points at, in the format
 * `gcloud iam service-accounts keys create` writes, its token_uri the simulator's.
 */
export function writeServiceAccountFile(
  stateDir: string,
  keys: CloudKeys,
  email: string,
  url: string,
): string {
  const sa = keys.serviceAccount!
  const file = join(stateDir, 'gcp-service-account.json')
  const project = email.split('@')[1]?.split('.')[0] ?? 'edge-fleet-sim'
  const o = {
    type: 'service_account',
    project_id: project,
    private_key_id: sa.keyId,
    private_key: sa.privateKey.export({ type: 'pkcs8', format: 'pem' }),
    client_email: email,
    client_id: '104710471047104710472',
    auth_uri: 'https://accounts.google.com/o/oauth2/auth',
    token_uri: `${url}/token`,
    auth_provider_x509_cert_url: 'https://www.googleapis.com/oauth2/v1/certs',
    universe_domain: 'googleapis.com',
  }
  writeFileSync(file, `${JSON.stringify(o, null, 2)}\n`, { mode: 0o600 })
  return file
}
