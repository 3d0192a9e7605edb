import type * as grpc from '@grpc/grpc-js'

/** A ServerReflectionRequest with one string field (tag byte and value, short values only). */
export type ReflectionQuery = readonly [tag: number, value: string]

/**
 * Sends the queries on one ServerReflectionInfo stream and returns the raw responses, one per
 * query (fewer if the server ends the stream or fails it early).
 */
export function reflect(
  c: grpc.Client,
  queries: readonly ReflectionQuery[],
  version: 'v1' | 'v1alpha' = 'v1alpha',
): Promise<Buffer[]> {
  const call = c.makeBidiStreamRequest(
    `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`,
    (b: Buffer) => b,
    (b: Buffer) => b,
  )
  const got: Buffer[] = []
  const done = new Promise<Buffer[]>((resolve) => {
    call.on('data', (b: Buffer) => {
      got.push(b)
      if (got.length === queries.length) call.end()
    })
    call.on('end', () => resolve(got))
    call.on('error', () => resolve(got))
  })
  for (const [tag, v] of queries)
    call.write(Buffer.concat([Buffer.from([tag, Buffer.byteLength(v)]), Buffer.from(v)]))
  return done
}
