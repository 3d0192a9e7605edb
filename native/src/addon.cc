// Module init: registers the context class and the free functions, and a cleanup hook that
// finalizes every context JavaScript left open (the GC is never the cleanup plan).
#include <napi.h>

#include "esys_context.h"

namespace tpm_native {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new InstanceData();
  data->contextCtor = Napi::Persistent(EsysContext::Define(env));
  env.SetInstanceData<InstanceData>(data);
  env.AddCleanupHook([data]() {
    // Copy first: Finalize() erases from the set. Busy contexts are left to process exit,
    // since finalizing under a running thread-pool command would be unsafe.
    std::set<EsysContext*> open = data->open;
    for (EsysContext* ctx : open) {
      if (!ctx->busy()) ctx->Finalize();
    }
  });
  exports.Set("openContext", Napi::Function::New(env, OpenContext, "openContext"));
  // 2: peerCred moved to the peercred addon (no tpm2-tss needed to check callers).
  exports.Set("abiVersion", Napi::Number::New(env, 3));
  return exports;
}

}  // namespace tpm_native

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return tpm_native::Init(env, exports);
}

NODE_API_MODULE(tpm_native, InitModule)
