import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The folder holding package.json and binding.gyp, found from a module's own URL, so files shipped
 * beside the code (build/, proto/) resolve the same from src/ (tests) and dist/src/ (runtime).
 */
export function packageRoot(from: string = import.meta.url): string {
  let dir = dirname(fileURLToPath(from))
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'binding.gyp'))) return dir
    dir = dirname(dir)
  }
  return process.cwd()
}
