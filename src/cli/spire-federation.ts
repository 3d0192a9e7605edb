/**
 * SPIRE's `server { federation { … } }` HCL block → our `[server.federation]` table. The shapes
 * differ in one way: SPIRE names a profile by a labelled block (`profile "https_web" { … }`,
 * `bundle_endpoint_profile "https_spiffe" { endpoint_spiffe_id = … }`), ours by a value. What has
 * no equivalent (ACME, a serving-cert sync interval) is listed, never dropped.
 */
type Obj = Record<string, unknown>

/** hcl2json gives each block as a list of bodies; SPIRE allows each block once. */
function body(v: unknown): Obj | undefined {
  if (Array.isArray(v)) return v.length === 0 ? {} : (v[0] as Obj)
  return v !== null && typeof v === 'object' ? (v as Obj) : undefined
}

/** A labelled block (`name "label" { … }`) as hcl2json gives it: `{label: [body]}`. */
function labelled(v: unknown, path: string, unmapped: string[]): [string, Obj] | undefined {
  const o = body(v)
  if (!o) return undefined
  const labels = Object.keys(o)
  if (labels.length !== 1) {
    unmapped.push(`${path}: expected one labelled block, found ${labels.length}`)
    return undefined
  }
  return [labels[0]!, body(o[labels[0]!]) ?? {}]
}

function num(v: unknown): unknown {
  return typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v
}

function bundleEndpoint(be: Obj, unmapped: string[]): Obj {
  const path = 'server.federation.bundle_endpoint'
  const out: Obj = {}
  for (const [k, v] of Object.entries(be)) {
    if (k === 'address' || k === 'refresh_hint') out[k] = v
    else if (k === 'port') out.port = num(v)
    else if (k === 'acme')
      unmapped.push(`${path}.acme: ACME is not supported (give a serving certificate)`)
    else if (k === 'profile') {
      const p = labelled(v, `${path}.profile`, unmapped)
      if (!p) continue
      const [type, pb] = p
      if (type === 'https_spiffe') out.profile = 'https_spiffe'
      else if (type === 'https_web') {
        out.profile = 'https_web'
        for (const [pk, pv] of Object.entries(pb)) {
          const sc = pk === 'serving_cert_file' ? body(pv) : undefined
          if (!sc) {
            unmapped.push(`${path}.profile "https_web".${pk}: not supported`)
            continue
          }
          for (const [sk, sv] of Object.entries(sc)) {
            if (sk === 'cert_file_path') out.cert_file = sv
            else if (sk === 'key_file_path') out.key_file = sv
            else unmapped.push(`${path}.profile "https_web".serving_cert_file.${sk}: not supported`)
          }
        }
      } else unmapped.push(`${path}.profile "${type}": no such profile`)
    } else unmapped.push(`${path}.${k}: not supported`)
  }
  return out
}

function relationship(td: string, rel: Obj, unmapped: string[]): Obj {
  const path = `server.federation.federates_with "${td}"`
  const out: Obj = {}
  for (const [k, v] of Object.entries(rel)) {
    if (k === 'bundle_endpoint_url') out.bundle_endpoint_url = v
    else if (k === 'bundle_endpoint_profile') {
      const p = labelled(v, `${path}.bundle_endpoint_profile`, unmapped)
      if (!p) continue
      const [type, pb] = p
      const profile: Obj = { type }
      for (const [pk, pv] of Object.entries(pb)) {
        if (pk === 'endpoint_spiffe_id' && type === 'https_spiffe') profile.endpoint_spiffe_id = pv
        else unmapped.push(`${path}.bundle_endpoint_profile "${type}".${pk}: not supported`)
      }
      out.bundle_endpoint_profile = profile
    } else unmapped.push(`${path}.${k}: not supported`)
  }
  return out
}

/** The mapped `[server.federation]` table; anything without an equivalent goes to `unmapped`. */
export function mapFederation(v: unknown, unmapped: string[]): Obj {
  const f = body(v) ?? {}
  const out: Obj = {}
  for (const [k, fv] of Object.entries(f)) {
    if (k === 'bundle_endpoint') out.bundle_endpoint = bundleEndpoint(body(fv) ?? {}, unmapped)
    else if (k === 'federates_with') {
      const byTd = (body(fv) ?? {}) as Obj
      const rels: Obj = {}
      for (const [td, rel] of Object.entries(byTd))
        rels[td] = relationship(td, body(rel) ?? {}, unmapped)
      out.federates_with = rels
    } else unmapped.push(`server.federation.${k}: not supported`)
  }
  return out
}
