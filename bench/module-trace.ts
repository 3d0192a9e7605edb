/**
 * Preload (node --import) for bench/agent-modules.ts: records what a process loads. ES modules
 * through the hooks in module-trace-hooks.ts; CommonJS modules (required from CJS packages, which
 * the ESM hooks do not see) from the require cache, and node's built-ins from
 * process.moduleLoadList, written to $MODULE_TRACE_OUT when the process exits.
 */
import { appendFileSync } from 'node:fs'
import { createRequire, register } from 'node:module'

register('./module-trace-hooks.js', import.meta.url)
const require = createRequire(import.meta.url)
process.on('exit', () => {
  const out = process.env.MODULE_TRACE_OUT
  if (!out) return
  const builtins = (process as unknown as { moduleLoadList: string[] }).moduleLoadList
  appendFileSync(
    out,
    `${JSON.stringify({ cjs: Object.keys(require.cache), builtins, rss: process.memoryUsage().rss })}\n`,
  )
})
