/**
 * A gRPC service registered under its fixed method paths whose real definition (serializers) and
 * handlers are built on the first call of any of its methods: `load` adds the real service to a
 * capturing stand-in for the server. grpc-js deserializes a request before it runs the handler,
 * so the first deserialization loads it; a load that throws fails that call (INTERNAL) and the
 * next call tries again.
 */
import type * as grpc from '@grpc/grpc-js'

/** Method name -> [request streams, response streams]. */
export type LazyMethods = Readonly<Record<string, readonly [boolean, boolean]>>

type Handler = (...args: unknown[]) => unknown
interface Real {
  readonly def: grpc.MethodDefinition<unknown, unknown>
  readonly handler: Handler
}

export function addLazyService(
  server: grpc.Server,
  service: string,
  methods: LazyMethods,
  load: (capture: grpc.Server) => void,
): void {
  let real: Map<string, Real> | undefined
  const get = (path: string): Real => {
    if (!real) {
      const found = new Map<string, Real>()
      const capture = {
        addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) {
          for (const [name, m] of Object.entries(def)) {
            const handler = (impl[name] ?? impl[m.originalName ?? '']) as Handler | undefined
            if (handler) found.set(m.path, { def: m, handler })
          }
        },
      } as unknown as grpc.Server
      load(capture)
      real = found
    }
    const r = real.get(path)
    if (!r) throw new Error(`${path} is not in the loaded service`)
    return r
  }
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {}
  const impl: grpc.UntypedServiceImplementation = {}
  for (const [name, [requestStream, responseStream]] of Object.entries(methods)) {
    const path = `/${service}/${name}`
    def[name] = {
      path,
      requestStream,
      responseStream,
      requestSerialize: (v: unknown) => get(path).def.requestSerialize(v),
      requestDeserialize: (b: Buffer) => get(path).def.requestDeserialize(b),
      responseSerialize: (v: unknown) => get(path).def.responseSerialize(v),
      responseDeserialize: (b: Buffer) => get(path).def.responseDeserialize(b),
    }
    impl[name] = ((...args: unknown[]) => get(path).handler(...args)) as grpc.UntypedHandleCall
  }
  server.addService(def, impl)
}
