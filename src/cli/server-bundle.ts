/**
 * `spiffe-edge server bundle …`: our own bundle (`show`) and, as SPIRE's verbs, the bundles of
 * federated trust domains (`show -id`, `list`, `set`, `delete`, `count`). `set` is how an
 * https_spiffe relationship gets its first bundle (SPIRE's bootstrap).
 */
import { readFileSync } from 'node:fs'
import { UsageError } from '../errors.js'
import { adminCall } from '../server/admin-client.js'
import type { Group, OptionSpec } from './command.js'
import { leaf } from './server-common.js'
import { bundleListMsg, bundleMsg, countMsg, line } from './spire-json.js'

const ID: OptionSpec = {
  type: 'string',
  description: 'the SPIFFE ID of the trust domain (spiffe://example.org)',
  valueName: 'ID',
}
const FORMAT: OptionSpec = { type: 'string', description: 'pem or spiffe', default: 'pem' }

function td(v: string | boolean | string[] | undefined): string {
  if (typeof v !== 'string' || v === '')
    throw new UsageError('-id is required', 'pass -id spiffe://<trust domain>')
  return encodeURIComponent(v)
}

function printBundle(r: Record<string, unknown>): string {
  return `****************************************\n* ${String(r.trust_domain)}\n****************************************\n${String(r.bundle)}\n`
}

export const bundleGroup: Group = {
  kind: 'group',
  name: 'bundle',
  summary: "our trust domain's bundle and those of federated trust domains",
  children: [
    leaf(
      'show',
      'print our bundle, or with -id a federated one (PEM, or SPIFFE bundle JSON)',
      { format: FORMAT, id: ID },
      async (v, io, sock) => {
        // -output json is types.Bundle whatever -format says (as spire-server's).
        const format = v.json ? 'spiffe' : encodeURIComponent(String(v.format))
        const r =
          typeof v.id === 'string'
            ? await adminCall(sock, 'GET', `/v1/federated-bundles/${td(v.id)}?format=${format}`)
            : await adminCall(sock, 'GET', `/v1/bundle?format=${format}`)
        io.out(
          v.json ? line(bundleMsg(String(r.trust_domain), String(r.bundle))) : String(r.bundle),
        )
        return 0
      },
    ),
    leaf(
      'list',
      'print the bundles of federated trust domains (-id: one of them)',
      { format: FORMAT, id: ID },
      async (v, io, sock) => {
        const format = v.json ? 'spiffe' : encodeURIComponent(String(v.format))
        if (typeof v.id === 'string') {
          const r = await adminCall(
            sock,
            'GET',
            `/v1/federated-bundles/${td(v.id)}?format=${format}`,
          )
          io.out(
            v.json ? line(bundleMsg(String(r.trust_domain), String(r.bundle))) : printBundle(r),
          )
          return 0
        }
        const r = await adminCall(sock, 'GET', `/v1/federated-bundles?format=${format}`)
        if (v.json) io.out(line(bundleListMsg(r.bundles as Record<string, unknown>[])))
        else for (const b of r.bundles as Record<string, unknown>[]) io.out(printBundle(b))
        return 0
      },
    ),
    leaf(
      'set',
      'create or replace the bundle of a federated trust domain',
      {
        id: ID,
        path: { type: 'string', description: 'the bundle file (- for stdin)', valueName: 'FILE' },
        format: FORMAT,
      },
      async (v, io, sock) => {
        const id = td(v.id)
        const file = typeof v.path === 'string' ? v.path : '-'
        let text: string
        try {
          text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8')
        } catch (err) {
          throw new UsageError(`cannot read ${file}: ${(err as Error).message}`, 'pass -path FILE')
        }
        const r = await adminCall(sock, 'PUT', `/v1/federated-bundles/${id}`, {
          bundle: text,
          format: String(v.format),
        })
        // BatchSetFederatedBundleResponse, as spire-server's bundle set prints it.
        io.out(
          v.json
            ? line({
                results: [
                  {
                    status: { code: 0, message: 'OK' },
                    bundle: bundleMsg(String(r.trust_domain), String(r.bundle)),
                  },
                ],
              })
            : 'bundle set.\n',
        )
        return 0
      },
    ),
    leaf(
      'delete',
      'delete the bundle of a federated trust domain',
      { id: ID },
      async (v, io, sock) => {
        const r = await adminCall(sock, 'DELETE', `/v1/federated-bundles/${td(v.id)}`)
        // BatchDeleteFederatedBundleResponse.
        io.out(
          v.json
            ? line({
                results: [
                  {
                    status: { code: 0, message: 'OK' },
                    trust_domain: String(r.deleted).replace(/^spiffe:\/\//, ''),
                  },
                ],
              })
            : 'bundle deleted.\n',
        )
        return 0
      },
    ),
    leaf('count', 'count the bundles of federated trust domains', {}, async (v, io, sock) => {
      const r = await adminCall(sock, 'GET', '/v1/federated-bundles?count=true')
      io.out(v.json ? line(countMsg(Number(r.count))) : `${String(r.count)} bundles\n`)
      return 0
    }),
  ],
}
