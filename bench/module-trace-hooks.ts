/**
 * ESM loader hooks for bench/agent-modules.ts (registered by bench/module-trace.ts): appends every
 * resolved module URL with the specifier and the importer to $MODULE_TRACE_OUT, one JSON line
 * each, so the driver can tell which package a module came in through.
 */
import { appendFileSync } from 'node:fs'

type Next = (s: string, c: unknown) => Promise<{ url: string }>

export async function resolve(
  specifier: string,
  context: { parentURL?: string },
  next: Next,
): Promise<{ url: string }> {
  const r = await next(specifier, context)
  const out = process.env.MODULE_TRACE_OUT
  if (out)
    appendFileSync(
      out,
      `${JSON.stringify({ esm: r.url, specifier, parent: context.parentURL ?? null })}\n`,
    )
  return r
}
