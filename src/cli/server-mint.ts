/**
 * SPIRE's `x509 mint` and `jwt mint`: an SVID for any ID in the trust domain, from the admin
 * socket, for tooling and tests. The X509-SVID key is made here and never sent: the server signs a
 * CSR for it. -write puts svid.pem, key.pem (0600) and bundle.pem in a directory.
 */
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { UsageError } from '../errors.js'
import { generateSoftwareKeyPair, softwareKey } from '../keymanager/memory.js'
import { adminCall } from '../server/admin-client.js'
import { parsePemCertificates } from '../spiffe/bundle.js'
import { createCsr } from '../spiffe/csr.js'
import { isKeyType, type KeyType } from '../spiffe/signer.js'
import { writeFile } from './api-x509.js'
import { type Group, requireString } from './command.js'
import { leaf, list, seconds } from './server-common.js'
import { jwtMintMsg, line, x509MintMsg } from './spire-json.js'

const pem = (label: string, der: Uint8Array) =>
  `-----BEGIN ${label}-----\n${Buffer.from(der)
    .toString('base64')
    .replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`

const ID = { type: 'string', description: 'the SPIFFE ID to mint for', valueName: 'ID' } as const
const TTL = {
  type: 'string',
  description: 'lifetime (10m, 1h; default: the server default)',
  valueName: 'DURATION',
} as const

const x509Mint = leaf(
  'mint',
  'mint an X509-SVID (the key is made here; the server signs its CSR)',
  {
    spiffeID: ID,
    ttl: TTL,
    dns: { type: 'string', multiple: true, description: 'DNS SAN, repeatable', valueName: 'NAME' },
    keyType: {
      type: 'string',
      description: 'ec-p256 (default), ec-p384, rsa-2048…',
      valueName: 'TYPE',
    },
    write: {
      type: 'string',
      description: 'write svid.pem, key.pem, bundle.pem to DIR',
      valueName: 'DIR',
    },
  },
  async (v, io, sock) => {
    const keyType = (typeof v.keyType === 'string' ? v.keyType : 'ec-p256') as KeyType
    if (!isKeyType(keyType))
      throw new UsageError(`-keyType '${String(v.keyType)}' is not a key type`)
    const { privateKey, publicKey } = await generateSoftwareKeyPair(keyType)
    const csr = await createCsr(softwareKey('mint', keyType, privateKey, publicKey))
    const r = await adminCall(sock, 'POST', '/v1/mint/x509', {
      spiffe_id: requireString(v, 'spiffeID'),
      ttl: seconds(v, 'ttl'),
      dns_names: list(v.dns),
      csr: Buffer.from(csr).toString('base64'),
    })
    const chain = (r.chain as string[]).map((c) => pem('CERTIFICATE', Buffer.from(c, 'base64')))
    const key = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()
    const bundle = String(r.bundle)
    if (typeof v.write === 'string') {
      mkdirSync(v.write, { recursive: true, mode: 0o700 })
      writeFile(join(v.write, 'svid.pem'), chain.join(''), 0o644)
      writeFile(join(v.write, 'key.pem'), key, 0o600)
      writeFile(join(v.write, 'bundle.pem'), bundle, 0o644)
    }
    if (v.json)
      io.out(
        line(
          x509MintMsg(
            (r.chain as string[]).map((c) => Buffer.from(c, 'base64')),
            privateKey.export({ format: 'der', type: 'pkcs8' }),
            parsePemCertificates(bundle).map((c) => Buffer.from(c)),
          ),
        ),
      )
    else if (typeof v.write === 'string') io.out(`X509-SVID written to ${v.write}\n`)
    else io.out(`X509-SVID:\n${chain.join('')}\nPrivate key:\n${key}\nRoot CAs:\n${bundle}`)
    return 0
  },
)

const jwtMint = leaf(
  'mint',
  'mint a JWT-SVID',
  {
    spiffeID: ID,
    ttl: TTL,
    audience: {
      type: 'string',
      multiple: true,
      description: 'audience (repeatable)',
      valueName: 'AUD',
    },
  },
  async (v, io, sock) => {
    const audience = list(v.audience)
    if (audience.length === 0) throw new UsageError('-audience is required')
    const r = await adminCall(sock, 'POST', '/v1/mint/jwt', {
      spiffe_id: requireString(v, 'spiffeID'),
      ttl: seconds(v, 'ttl'),
      audience,
    })
    io.out(
      v.json
        ? line(jwtMintMsg(String(r.token), requireString(v, 'spiffeID'), r.expires_at))
        : `${String(r.token)}\n`,
    )
    return 0
  },
)

export const x509Group: Group = {
  kind: 'group',
  name: 'x509',
  summary: 'X509-SVIDs minted by the server',
  children: [x509Mint],
}
export const jwtGroup: Group = {
  kind: 'group',
  name: 'jwt',
  summary: 'JWT-SVIDs minted by the server',
  children: [jwtMint],
}
