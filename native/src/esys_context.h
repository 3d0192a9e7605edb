// One ESYS context over one TCTI. The C++ side only moves bytes and handles: every command takes
// plain numbers / marshaled TPM structures and returns marshaled structures; parsing and policy
// live in TypeScript (src/tpm). One command may be in flight per context (ESAPI is not
// re-entrant); the TypeScript TpmContext queues calls, and `busy_` is the backstop.
#pragma once

#include <napi.h>
#include <tss2/tss2_esys.h>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace tpm_native {

class EsysContext;

// Per-environment state: the JS class constructor and the open contexts, so the environment
// cleanup hook can finalize whatever JavaScript forgot to close.
struct InstanceData {
  Napi::FunctionReference contextCtor;
  std::set<EsysContext*> open;
};

class EsysContext : public Napi::ObjectWrap<EsysContext> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit EsysContext(const Napi::CallbackInfo& info);
  ~EsysContext() override;

  // Takes ownership of an initialized TCTI + ESYS pair (from the open worker).
  void Adopt(TSS2_TCTI_CONTEXT* tcti, ESYS_CONTEXT* esys);
  // Finalizes ESYS and the TCTI; safe to call twice. Never while a command runs.
  void Finalize();
  bool busy() const { return busy_; }
  ESYS_CONTEXT* esys() { return esys_; }
  void Release() { busy_ = false; }

 private:
  // Checks the context is open and idle, marks it busy; on failure throws and returns false.
  bool Acquire(const Napi::CallbackInfo& info);

  Napi::Value GetRandom(const Napi::CallbackInfo& info);
  Napi::Value Startup(const Napi::CallbackInfo& info);
  Napi::Value GetCapability(const Napi::CallbackInfo& info);
  Napi::Value ReadPublic(const Napi::CallbackInfo& info);
  Napi::Value NvReadPublic(const Napi::CallbackInfo& info);
  Napi::Value NvRead(const Napi::CallbackInfo& info);
  // Key and attestation commands (commands.cc), policy sessions (policy.cc).
  Napi::Value CreatePrimary(const Napi::CallbackInfo& info);
  Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value FlushContext(const Napi::CallbackInfo& info);
  Napi::Value TrFromTpmPublic(const Napi::CallbackInfo& info);
  Napi::Value TrClose(const Napi::CallbackInfo& info);
  Napi::Value EvictControl(const Napi::CallbackInfo& info);
  Napi::Value StartPolicySession(const Napi::CallbackInfo& info);
  Napi::Value PolicySecret(const Napi::CallbackInfo& info);
  Napi::Value PolicyOr(const Napi::CallbackInfo& info);
  Napi::Value PolicyPcr(const Napi::CallbackInfo& info);
  Napi::Value PolicyGetDigest(const Napi::CallbackInfo& info);
  Napi::Value ActivateCredential(const Napi::CallbackInfo& info);
  Napi::Value Quote(const Napi::CallbackInfo& info);
  Napi::Value PcrRead(const Napi::CallbackInfo& info);
  Napi::Value Certify(const Napi::CallbackInfo& info);
  Napi::Value Sign(const Napi::CallbackInfo& info);
  Napi::Value Transients(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value IsOpen(const Napi::CallbackInfo& info);

  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  bool busy_ = false;

 public:
  // Transient objects and sessions this context loaded: flushed on close, so nothing leaks into a
  // TPM without a resource manager. Only touched on the main thread (OnOK / Finalize).
  std::set<ESYS_TR> transients;
};

// What a command returns: named byte strings and numbers, or one byte string alone.
struct CallResult {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> bytes;
  std::vector<std::pair<std::string, double>> numbers;
  bool single = false;  // resolve with bytes[0] itself instead of an object
  std::vector<ESYS_TR> created;  // transients to track once the promise settles
  std::vector<ESYS_TR> flushed;  // transients no longer loaded
};

using CallBody = std::function<TSS2_RC(ESYS_CONTEXT*, CallResult&)>;

// Runs `body` on the libuv thread pool and settles a promise on the main thread.
Napi::Value RunOnPool(const Napi::CallbackInfo& info, EsysContext* ctx, CallBody body);

// Marshals one TPM structure with its Tss2_MU_*_Marshal function into a byte vector.
template <typename T>
TSS2_RC Marshal(TSS2_RC (*fn)(const T*, uint8_t*, size_t, size_t*), const T* src,
                std::vector<uint8_t>& out) {
  out.resize(sizeof(T) + 16);
  size_t offset = 0;
  TSS2_RC rc = fn(src, out.data(), out.size(), &offset);
  out.resize(rc == TSS2_RC_SUCCESS ? offset : 0);
  return rc;
}

// Maps a hierarchy handle (TPM_RH_OWNER/ENDORSEMENT/PLATFORM) to its ESYS_TR, else ESYS_TR_NONE.
ESYS_TR HierarchyTr(uint32_t tpmHandle);

// Reads argument i as bytes (Buffer / Uint8Array); throws a TypeError and returns false otherwise.
bool ReadBytes(const Napi::CallbackInfo& info, size_t i, std::vector<uint8_t>* out);
bool ReadU32(const Napi::CallbackInfo& info, size_t i, uint32_t* out);

// A JS Error with code ERR_TPM, the numeric rc and tpm2-tss's decoded text.
Napi::Error TpmRcError(Napi::Env env, TSS2_RC rc, const char* what);

Napi::Value OpenContext(const Napi::CallbackInfo& info);

}  // namespace tpm_native
