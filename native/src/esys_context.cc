#include "esys_context.h"

#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <cstring>

namespace tpm_native {

bool ReadU32(const Napi::CallbackInfo& info, size_t i, uint32_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v < 0 || v > 4294967295.0 || v != static_cast<double>(static_cast<uint32_t>(v))) {
    Napi::RangeError::New(info.Env(), "argument " + std::to_string(i) + " must be a uint32")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint32_t>(v);
  return true;
}

bool ReadBytes(const Napi::CallbackInfo& info, size_t i, std::vector<uint8_t>* out) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a Uint8Array")
        .ThrowAsJavaScriptException();
    return false;
  }
  auto arr = info[i].As<Napi::Uint8Array>();
  out->assign(arr.Data(), arr.Data() + arr.ByteLength());
  return true;
}

namespace {

}  // namespace

ESYS_TR HierarchyTr(uint32_t tpmHandle) {
  switch (tpmHandle) {
    case TPM2_RH_OWNER: return ESYS_TR_RH_OWNER;
    case TPM2_RH_PLATFORM: return ESYS_TR_RH_PLATFORM;
    case TPM2_RH_ENDORSEMENT: return ESYS_TR_RH_ENDORSEMENT;
    default: return ESYS_TR_NONE;
  }
}

namespace {

// ESYS_TR for an existing TPM object (persistent key or NV index), closed when it goes out of
// scope. TR_Close only drops ESYS's metadata; it never evicts or flushes anything in the TPM.
class ScopedTr {
 public:
  explicit ScopedTr(ESYS_CONTEXT* esys) : esys_(esys) {}
  ~ScopedTr() {
    if (tr_ != ESYS_TR_NONE) Esys_TR_Close(esys_, &tr_);
  }
  TSS2_RC From(TPM2_HANDLE handle) {
    return Esys_TR_FromTPMPublic(esys_, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr_);
  }
  ESYS_TR get() const { return tr_; }

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR tr_ = ESYS_TR_NONE;
};

class CallWorker : public Napi::AsyncWorker {
 public:
  CallWorker(Napi::Env env, Napi::Object self, EsysContext* ctx, CallBody body)
      : Napi::AsyncWorker(env, "tpm_native.call"),
        deferred_(Napi::Promise::Deferred::New(env)),
        self_(Napi::Persistent(self)),
        ctx_(ctx),
        body_(std::move(body)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { rc_ = body_(ctx_->esys(), result_); }

  void OnOK() override {
    Napi::Env env = Env();
    ctx_->Release();
    for (ESYS_TR tr : result_.created) ctx_->transients.insert(tr);
    for (ESYS_TR tr : result_.flushed) ctx_->transients.erase(tr);
    if (rc_ != TSS2_RC_SUCCESS) {
      deferred_.Reject(TpmRcError(env, rc_, "TPM command failed").Value());
      return;
    }
    if (result_.single) {
      const auto& b = result_.bytes.at(0).second;
      deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size()));
      return;
    }
    Napi::Object out = Napi::Object::New(env);
    for (const auto& [name, b] : result_.bytes) {
      out.Set(name, Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size()));
    }
    for (const auto& [name, n] : result_.numbers) out.Set(name, Napi::Number::New(env, n));
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override {
    ctx_->Release();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference self_;  // keeps the context alive while the command runs
  EsysContext* ctx_;
  CallBody body_;
  CallResult result_;
  TSS2_RC rc_ = TSS2_RC_SUCCESS;
};

class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, std::string conf)
      : Napi::AsyncWorker(env, "tpm_native.open"),
        deferred_(Napi::Promise::Deferred::New(env)),
        conf_(std::move(conf)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    rc_ = Tss2_TctiLdr_Initialize(conf_.c_str(), &tcti_);
    if (rc_ != TSS2_RC_SUCCESS) {
      tcti_ = nullptr;
      return;
    }
    rc_ = Esys_Initialize(&esys_, tcti_, nullptr);
    if (rc_ != TSS2_RC_SUCCESS) {
      esys_ = nullptr;
      Tss2_TctiLdr_Finalize(&tcti_);
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (rc_ != TSS2_RC_SUCCESS) {
      deferred_.Reject(TpmRcError(env, rc_, ("could not open TCTI '" + conf_ + "'").c_str()).Value());
      return;
    }
    auto* data = env.GetInstanceData<InstanceData>();
    Napi::Object obj = data->contextCtor.New({});
    EsysContext::Unwrap(obj)->Adopt(tcti_, esys_);
    deferred_.Resolve(obj);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string conf_;
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  TSS2_RC rc_ = TSS2_RC_SUCCESS;
};

}  // namespace

Napi::Error TpmRcError(Napi::Env env, TSS2_RC rc, const char* what) {
  const char* decoded = Tss2_RC_Decode(rc);
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%x", rc);
  Napi::Error err = Napi::Error::New(
      env, std::string(what) + ": " + (decoded ? decoded : "unknown") + " (rc " + hex + ")");
  err.Set("code", Napi::String::New(env, "ERR_TPM"));
  err.Set("rc", Napi::Number::New(env, rc));
  err.Set("decoded", Napi::String::New(env, decoded ? decoded : ""));
  return err;
}

Napi::Value RunOnPool(const Napi::CallbackInfo& info, EsysContext* ctx, CallBody body) {
  auto* worker = new CallWorker(info.Env(), info.This().As<Napi::Object>(), ctx, std::move(body));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Function EsysContext::Define(Napi::Env env) {
  return DefineClass(env, "NativeEsysContext",
                     {
                         InstanceMethod("getRandom", &EsysContext::GetRandom),
                         InstanceMethod("startup", &EsysContext::Startup),
                         InstanceMethod("getCapability", &EsysContext::GetCapability),
                         InstanceMethod("readPublic", &EsysContext::ReadPublic),
                         InstanceMethod("nvReadPublic", &EsysContext::NvReadPublic),
                         InstanceMethod("nvRead", &EsysContext::NvRead),
                         InstanceMethod("createPrimary", &EsysContext::CreatePrimary),
                         InstanceMethod("create", &EsysContext::Create),
                         InstanceMethod("load", &EsysContext::Load),
                         InstanceMethod("flushContext", &EsysContext::FlushContext),
                         InstanceMethod("trFromTpmPublic", &EsysContext::TrFromTpmPublic),
                         InstanceMethod("trClose", &EsysContext::TrClose),
                         InstanceMethod("evictControl", &EsysContext::EvictControl),
                         InstanceMethod("startPolicySession", &EsysContext::StartPolicySession),
                         InstanceMethod("policySecret", &EsysContext::PolicySecret),
                         InstanceMethod("policyOr", &EsysContext::PolicyOr),
                         InstanceMethod("policyPcr", &EsysContext::PolicyPcr),
                         InstanceMethod("policyGetDigest", &EsysContext::PolicyGetDigest),
                         InstanceMethod("activateCredential", &EsysContext::ActivateCredential),
                         InstanceMethod("quote", &EsysContext::Quote),
                         InstanceMethod("pcrRead", &EsysContext::PcrRead),
                         InstanceMethod("certify", &EsysContext::Certify),
                         InstanceMethod("sign", &EsysContext::Sign),
                         InstanceMethod("transients", &EsysContext::Transients),
                         InstanceMethod("close", &EsysContext::Close),
                         InstanceMethod("isOpen", &EsysContext::IsOpen),
                     });
}

EsysContext::EsysContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EsysContext>(info) {}

EsysContext::~EsysContext() {
  // A running worker holds a reference, so a context is never destroyed while busy.
  Finalize();
}

void EsysContext::Adopt(TSS2_TCTI_CONTEXT* tcti, ESYS_CONTEXT* esys) {
  tcti_ = tcti;
  esys_ = esys;
  Env().GetInstanceData<InstanceData>()->open.insert(this);
}

void EsysContext::Finalize() {
  if (esys_ != nullptr) {
    for (ESYS_TR tr : transients) Esys_FlushContext(esys_, tr);
    transients.clear();
    Esys_Finalize(&esys_);
  }
  if (tcti_ != nullptr) Tss2_TctiLdr_Finalize(&tcti_);
  esys_ = nullptr;
  tcti_ = nullptr;
  if (auto* data = Env().GetInstanceData<InstanceData>()) data->open.erase(this);
}

bool EsysContext::Acquire(const Napi::CallbackInfo& info) {
  if (esys_ == nullptr) {
    Napi::Error err = Napi::Error::New(info.Env(), "the TPM context is closed");
    err.Set("code", Napi::String::New(info.Env(), "ERR_TPM_CLOSED"));
    err.ThrowAsJavaScriptException();
    return false;
  }
  if (busy_) {
    Napi::Error err =
        Napi::Error::New(info.Env(), "a TPM command is already in flight on this context");
    err.Set("code", Napi::String::New(info.Env(), "ERR_TPM_BUSY"));
    err.ThrowAsJavaScriptException();
    return false;
  }
  busy_ = true;
  return true;
}

Napi::Value EsysContext::GetRandom(const Napi::CallbackInfo& info) {
  uint32_t n;
  if (!ReadU32(info, 0, &n)) return info.Env().Undefined();
  if (n == 0 || n > sizeof(TPMU_HA)) {
    Napi::RangeError::New(info.Env(), "getRandom takes 1 to 64 bytes per command")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [n](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_DIGEST* bytes = nullptr;
    TSS2_RC rc = Esys_GetRandom(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                static_cast<UINT16>(n), &bytes);
    if (rc != TSS2_RC_SUCCESS) return rc;
    r.single = true;
    r.bytes.emplace_back("bytes", std::vector<uint8_t>(bytes->buffer, bytes->buffer + bytes->size));
    Esys_Free(bytes);
    return rc;
  });
}

// TPM2_Startup(CLEAR): a TPM that restarted without it (a bare swtpm) answers TPM_RC_INITIALIZE
// to everything; TypeScript sends this only after seeing that code.
Napi::Value EsysContext::Startup(const Napi::CallbackInfo& info) {
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [](ESYS_CONTEXT* esys, CallResult& r) {
    TSS2_RC rc = Esys_Startup(esys, TPM2_SU_CLEAR);
    r.numbers.emplace_back("ok", 1);
    return rc;
  });
}

Napi::Value EsysContext::GetCapability(const Napi::CallbackInfo& info) {
  uint32_t cap, property, count;
  if (!ReadU32(info, 0, &cap) || !ReadU32(info, 1, &property) || !ReadU32(info, 2, &count)) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [cap, property, count](ESYS_CONTEXT* esys, CallResult& r) {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* data = nullptr;
    TSS2_RC rc = Esys_GetCapability(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, cap,
                                    property, count, &more, &data);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> out;
    rc = Marshal(Tss2_MU_TPMS_CAPABILITY_DATA_Marshal, data, out);
    Esys_Free(data);
    r.bytes.emplace_back("data", std::move(out));
    r.numbers.emplace_back("moreData", more == TPM2_YES ? 1 : 0);
    return rc;
  });
}

Napi::Value EsysContext::ReadPublic(const Napi::CallbackInfo& info) {
  uint32_t handle;
  if (!ReadU32(info, 0, &handle)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [handle](ESYS_CONTEXT* esys, CallResult& r) {
    ScopedTr tr(esys);
    TSS2_RC rc = tr.From(handle);
    if (rc != TSS2_RC_SUCCESS) return rc;
    TPM2B_PUBLIC* pub = nullptr;
    TPM2B_NAME* name = nullptr;
    TPM2B_NAME* qualified = nullptr;
    rc = Esys_ReadPublic(esys, tr.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &name,
                         &qualified);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> out;
    rc = Marshal(Tss2_MU_TPM2B_PUBLIC_Marshal, pub, out);
    r.bytes.emplace_back("public", std::move(out));
    r.bytes.emplace_back("name", std::vector<uint8_t>(name->name, name->name + name->size));
    r.bytes.emplace_back("qualifiedName",
                         std::vector<uint8_t>(qualified->name, qualified->name + qualified->size));
    Esys_Free(pub);
    Esys_Free(name);
    Esys_Free(qualified);
    return rc;
  });
}

Napi::Value EsysContext::NvReadPublic(const Napi::CallbackInfo& info) {
  uint32_t index;
  if (!ReadU32(info, 0, &index)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [index](ESYS_CONTEXT* esys, CallResult& r) {
    ScopedTr tr(esys);
    TSS2_RC rc = tr.From(index);
    if (rc != TSS2_RC_SUCCESS) return rc;
    TPM2B_NV_PUBLIC* pub = nullptr;
    TPM2B_NAME* name = nullptr;
    rc = Esys_NV_ReadPublic(esys, tr.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &name);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> out;
    rc = Marshal(Tss2_MU_TPM2B_NV_PUBLIC_Marshal, pub, out);
    r.bytes.emplace_back("nvPublic", std::move(out));
    r.bytes.emplace_back("name", std::vector<uint8_t>(name->name, name->name + name->size));
    Esys_Free(pub);
    Esys_Free(name);
    return rc;
  });
}

// nvRead(index, authHandle, size, offset): authHandle is the index itself (AUTHREAD) or a
// hierarchy (owner/platform). One chunk per call; TypeScript chunks to TPM_PT_NV_BUFFER_MAX.
Napi::Value EsysContext::NvRead(const Napi::CallbackInfo& info) {
  uint32_t index, auth, size, offset;
  if (!ReadU32(info, 0, &index) || !ReadU32(info, 1, &auth) || !ReadU32(info, 2, &size) ||
      !ReadU32(info, 3, &offset)) {
    return info.Env().Undefined();
  }
  if (size == 0 || size > sizeof(TPM2B_MAX_NV_BUFFER::buffer) || offset > 0xffff) {
    Napi::RangeError::New(info.Env(), "nvRead size/offset out of range").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  ESYS_TR hierarchy = HierarchyTr(auth);
  if (auth != index && hierarchy == ESYS_TR_NONE) {
    Napi::RangeError::New(info.Env(), "nvRead auth must be the index or a hierarchy handle")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [=](ESYS_CONTEXT* esys, CallResult& r) {
    ScopedTr tr(esys);
    TSS2_RC rc = tr.From(index);
    if (rc != TSS2_RC_SUCCESS) return rc;
    TPM2B_MAX_NV_BUFFER* data = nullptr;
    rc = Esys_NV_Read(esys, hierarchy == ESYS_TR_NONE ? tr.get() : hierarchy, tr.get(),
                      ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, static_cast<UINT16>(size),
                      static_cast<UINT16>(offset), &data);
    if (rc != TSS2_RC_SUCCESS) return rc;
    r.single = true;
    r.bytes.emplace_back("data", std::vector<uint8_t>(data->buffer, data->buffer + data->size));
    Esys_Free(data);
    return rc;
  });
}

Napi::Value EsysContext::Close(const Napi::CallbackInfo& info) {
  if (busy_) {
    Napi::Error err = Napi::Error::New(info.Env(), "cannot close a TPM context mid-command");
    err.Set("code", Napi::String::New(info.Env(), "ERR_TPM_BUSY"));
    err.ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Finalize();
  return info.Env().Undefined();
}

Napi::Value EsysContext::IsOpen(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), esys_ != nullptr);
}

Napi::Value OpenContext(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(info.Env(), "openContext(tcti) takes a TCTI string")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  auto* worker = new OpenWorker(info.Env(), info[0].As<Napi::String>().Utf8Value());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace tpm_native
