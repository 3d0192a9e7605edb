// Key, session and attestation commands. Same rule as everywhere in native/: inputs arrive as
// marshaled TPM structures and numbers, outputs leave marshaled; TypeScript builds templates,
// parses results and decides. Every transient object or session created here is recorded in the
// context's transient set (flushed on close) and leaves it when flushed.
#include <tss2/tss2_mu.h>

#include "esys_context.h"
#include "marshal.h"

namespace tpm_native {

namespace {

std::vector<uint8_t> NameOf(ESYS_CONTEXT* esys, ESYS_TR tr, TSS2_RC* rc) {
  TPM2B_NAME* name = nullptr;
  *rc = Esys_TR_GetName(esys, tr, &name);
  if (*rc != TSS2_RC_SUCCESS) return {};
  std::vector<uint8_t> out(name->name, name->name + name->size);
  Esys_Free(name);
  return out;
}

const TPMT_SIG_SCHEME kNullScheme = {TPM2_ALG_NULL, {}};

}  // namespace

// createPrimary(hierarchy, inPublic: TPM2B_PUBLIC) → {handle, public}
Napi::Value EsysContext::CreatePrimary(const Napi::CallbackInfo& info) {
  uint32_t hierarchy;
  TPM2B_PUBLIC inPublic;
  if (!ReadU32(info, 0, &hierarchy) ||
      !Unmarshal(info, 1, Tss2_MU_TPM2B_PUBLIC_Unmarshal, &inPublic, "TPM2B_PUBLIC")) {
    return info.Env().Undefined();
  }
  ESYS_TR h = HierarchyTr(hierarchy);
  if (h == ESYS_TR_NONE) {
    Napi::RangeError::New(info.Env(), "createPrimary takes a hierarchy handle")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [h, inPublic](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_SENSITIVE_CREATE sensitive = {};
    TPM2B_DATA outside = {};
    TPML_PCR_SELECTION creationPcr = {};
    ESYS_TR handle = ESYS_TR_NONE;
    TPM2B_PUBLIC* outPublic = nullptr;
    TSS2_RC rc = Esys_CreatePrimary(esys, h, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                    &sensitive, &inPublic, &outside, &creationPcr, &handle,
                                    &outPublic, nullptr, nullptr, nullptr);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> pub;
    rc = Marshal(Tss2_MU_TPM2B_PUBLIC_Marshal, outPublic, pub);
    Esys_Free(outPublic);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_FlushContext(esys, handle);  // never leave an object nobody owns
      return rc;
    }
    // No Name here: TypeScript hashes the public area (objectName). ESYS checked the TPM's Name
    // against it already, and Esys_TR_GetName would hash it again in a new OpenSSL library
    // context (tpm2-tss 3.x), about 0.4 ms of CPU per call.
    r.created.push_back(handle);
    r.numbers.emplace_back("handle", handle);
    r.bytes.emplace_back("public", std::move(pub));
    return rc;
  });
}

// create(parent, inPublic: TPM2B_PUBLIC) → {private: TPM2B_PRIVATE, public: TPM2B_PUBLIC}
Napi::Value EsysContext::Create(const Napi::CallbackInfo& info) {
  uint32_t parent;
  TPM2B_PUBLIC inPublic;
  if (!ReadU32(info, 0, &parent) ||
      !Unmarshal(info, 1, Tss2_MU_TPM2B_PUBLIC_Unmarshal, &inPublic, "TPM2B_PUBLIC")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [parent, inPublic](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_SENSITIVE_CREATE sensitive = {};
    TPM2B_DATA outside = {};
    TPML_PCR_SELECTION creationPcr = {};
    TPM2B_PRIVATE* outPrivate = nullptr;
    TPM2B_PUBLIC* outPublic = nullptr;
    TSS2_RC rc = Esys_Create(esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                             &sensitive, &inPublic, &outside, &creationPcr, &outPrivate,
                             &outPublic, nullptr, nullptr, nullptr);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> priv, pub;
    rc = Marshal(Tss2_MU_TPM2B_PRIVATE_Marshal, outPrivate, priv);
    if (rc == TSS2_RC_SUCCESS) rc = Marshal(Tss2_MU_TPM2B_PUBLIC_Marshal, outPublic, pub);
    Esys_Free(outPrivate);
    Esys_Free(outPublic);
    r.bytes.emplace_back("private", std::move(priv));
    r.bytes.emplace_back("public", std::move(pub));
    return rc;
  });
}

// load(parent, private: TPM2B_PRIVATE, public: TPM2B_PUBLIC) → {handle}
Napi::Value EsysContext::Load(const Napi::CallbackInfo& info) {
  uint32_t parent;
  TPM2B_PRIVATE inPrivate;
  TPM2B_PUBLIC inPublic;
  if (!ReadU32(info, 0, &parent) ||
      !Unmarshal(info, 1, Tss2_MU_TPM2B_PRIVATE_Unmarshal, &inPrivate, "TPM2B_PRIVATE") ||
      !Unmarshal(info, 2, Tss2_MU_TPM2B_PUBLIC_Unmarshal, &inPublic, "TPM2B_PUBLIC")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [parent, inPrivate, inPublic](ESYS_CONTEXT* esys, CallResult& r) {
    ESYS_TR handle = ESYS_TR_NONE;
    TSS2_RC rc = Esys_Load(esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &inPrivate,
                           &inPublic, &handle);
    if (rc != TSS2_RC_SUCCESS) return rc;
    // The Name is the hash of inPublic, which ESYS compared with the TPM's: TypeScript computes it
    // (see createPrimary for why not Esys_TR_GetName).
    r.created.push_back(handle);
    r.numbers.emplace_back("handle", handle);
    return rc;
  });
}

// flushContext(handle): unloads a transient object or session.
Napi::Value EsysContext::FlushContext(const Napi::CallbackInfo& info) {
  uint32_t handle;
  if (!ReadU32(info, 0, &handle)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [handle](ESYS_CONTEXT* esys, CallResult& r) {
    TSS2_RC rc = Esys_FlushContext(esys, handle);
    r.flushed.push_back(handle);  // gone from ESYS's view either way
    r.numbers.emplace_back("flushed", handle);
    return rc;
  });
}

// trFromTpmPublic(tpmHandle) → handle: an ESYS reference to a persistent object (close with trClose).
Napi::Value EsysContext::TrFromTpmPublic(const Napi::CallbackInfo& info) {
  uint32_t tpmHandle;
  if (!ReadU32(info, 0, &tpmHandle)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [tpmHandle](ESYS_CONTEXT* esys, CallResult& r) {
    ESYS_TR tr = ESYS_TR_NONE;
    TSS2_RC rc = Esys_TR_FromTPMPublic(esys, tpmHandle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> name = NameOf(esys, tr, &rc);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_TR_Close(esys, &tr);
      return rc;
    }
    r.numbers.emplace_back("handle", tr);
    r.bytes.emplace_back("name", std::move(name));
    return rc;
  });
}

// trClose(handle): drops ESYS's metadata for a persistent reference (nothing is evicted).
Napi::Value EsysContext::TrClose(const Napi::CallbackInfo& info) {
  uint32_t handle;
  if (!ReadU32(info, 0, &handle)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [handle](ESYS_CONTEXT* esys, CallResult& r) {
    ESYS_TR tr = handle;
    r.numbers.emplace_back("closed", handle);
    return Esys_TR_Close(esys, &tr);
  });
}

// evictControl(object, persistentHandle) → {handle}: persists a transient (owner auth) or, given
// a persistent reference, evicts it (handle is then 0).
Napi::Value EsysContext::EvictControl(const Napi::CallbackInfo& info) {
  uint32_t object, persistent;
  if (!ReadU32(info, 0, &object) || !ReadU32(info, 1, &persistent)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [object, persistent](ESYS_CONTEXT* esys, CallResult& r) {
    ESYS_TR out = ESYS_TR_NONE;
    TSS2_RC rc = Esys_EvictControl(esys, ESYS_TR_RH_OWNER, object, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                   ESYS_TR_NONE, persistent, &out);
    r.numbers.emplace_back("handle", out == ESYS_TR_NONE ? 0 : out);
    return rc;
  });
}

// activateCredential(activate, key, keySession, credentialBlob: TPM2B_ID_OBJECT,
//                    secret: TPM2B_ENCRYPTED_SECRET) → certInfo bytes
Napi::Value EsysContext::ActivateCredential(const Napi::CallbackInfo& info) {
  uint32_t activate, key, session;
  TPM2B_ID_OBJECT blob;
  TPM2B_ENCRYPTED_SECRET secret;
  if (!ReadU32(info, 0, &activate) || !ReadU32(info, 1, &key) || !ReadU32(info, 2, &session) ||
      !Unmarshal(info, 3, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal, &blob, "TPM2B_ID_OBJECT") ||
      !Unmarshal(info, 4, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal, &secret,
                 "TPM2B_ENCRYPTED_SECRET")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [=](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_DIGEST* certInfo = nullptr;
    TSS2_RC rc = Esys_ActivateCredential(esys, activate, key, ESYS_TR_PASSWORD, session,
                                         ESYS_TR_NONE, &blob, &secret, &certInfo);
    if (rc != TSS2_RC_SUCCESS) return rc;
    r.single = true;
    r.bytes.emplace_back("certInfo",
                         std::vector<uint8_t>(certInfo->buffer, certInfo->buffer + certInfo->size));
    Esys_Free(certInfo);
    return rc;
  });
}

// quote(signer, qualifyingData, selection: TPML_PCR_SELECTION) → {quoted: TPMS_ATTEST, signature: TPMT_SIGNATURE}
Napi::Value EsysContext::Quote(const Napi::CallbackInfo& info) {
  uint32_t signer;
  TPM2B_DATA qualifying;
  TPML_PCR_SELECTION selection;
  if (!ReadU32(info, 0, &signer) || !ReadSized(info, 1, &qualifying, "qualifyingData") ||
      !Unmarshal(info, 2, Tss2_MU_TPML_PCR_SELECTION_Unmarshal, &selection, "TPML_PCR_SELECTION")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [=](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_ATTEST* quoted = nullptr;
    TPMT_SIGNATURE* sig = nullptr;
    TSS2_RC rc = Esys_Quote(esys, signer, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                            &qualifying, &kNullScheme, &selection, &quoted, &sig);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> sigBytes;
    rc = Marshal(Tss2_MU_TPMT_SIGNATURE_Marshal, sig, sigBytes);
    r.bytes.emplace_back("quoted", std::vector<uint8_t>(quoted->attestationData,
                                                        quoted->attestationData + quoted->size));
    r.bytes.emplace_back("signature", std::move(sigBytes));
    Esys_Free(quoted);
    Esys_Free(sig);
    return rc;
  });
}

// pcrRead(selection: TPML_PCR_SELECTION) → {updateCounter, selection, values: TPML_DIGEST}
// (the TPM returns at most 8 digests per call; TypeScript asks again for the rest).
Napi::Value EsysContext::PcrRead(const Napi::CallbackInfo& info) {
  TPML_PCR_SELECTION selection;
  if (!Unmarshal(info, 0, Tss2_MU_TPML_PCR_SELECTION_Unmarshal, &selection, "TPML_PCR_SELECTION")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [selection](ESYS_CONTEXT* esys, CallResult& r) {
    UINT32 counter = 0;
    TPML_PCR_SELECTION* outSel = nullptr;
    TPML_DIGEST* values = nullptr;
    TSS2_RC rc = Esys_PCR_Read(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &selection,
                               &counter, &outSel, &values);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> sel, vals;
    rc = Marshal(Tss2_MU_TPML_PCR_SELECTION_Marshal, outSel, sel);
    if (rc == TSS2_RC_SUCCESS) rc = Marshal(Tss2_MU_TPML_DIGEST_Marshal, values, vals);
    Esys_Free(outSel);
    Esys_Free(values);
    r.numbers.emplace_back("updateCounter", counter);
    r.bytes.emplace_back("selection", std::move(sel));
    r.bytes.emplace_back("values", std::move(vals));
    return rc;
  });
}

// certify(object, signer, qualifyingData) → {certifyInfo: TPMS_ATTEST, signature: TPMT_SIGNATURE}
Napi::Value EsysContext::Certify(const Napi::CallbackInfo& info) {
  uint32_t object, signer;
  TPM2B_DATA qualifying;
  if (!ReadU32(info, 0, &object) || !ReadU32(info, 1, &signer) ||
      !ReadSized(info, 2, &qualifying, "qualifyingData")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [=](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_ATTEST* attest = nullptr;
    TPMT_SIGNATURE* sig = nullptr;
    TSS2_RC rc = Esys_Certify(esys, object, signer, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD,
                              ESYS_TR_NONE, &qualifying, &kNullScheme, &attest, &sig);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> sigBytes;
    rc = Marshal(Tss2_MU_TPMT_SIGNATURE_Marshal, sig, sigBytes);
    r.bytes.emplace_back("certifyInfo", std::vector<uint8_t>(attest->attestationData,
                                                             attest->attestationData + attest->size));
    r.bytes.emplace_back("signature", std::move(sigBytes));
    Esys_Free(attest);
    Esys_Free(sig);
    return rc;
  });
}

// sign(key, digest, session?) → TPMT_SIGNATURE, with the key's own scheme. Only for unrestricted
// keys: the NULL hashcheck ticket is refused by restricted ones, which is the point of restriction.
// `session` (a policy session TypeScript satisfied, still owned and flushed by TypeScript)
// authorizes a key with an authPolicy; without it, the empty password.
Napi::Value EsysContext::Sign(const Napi::CallbackInfo& info) {
  uint32_t key;
  uint32_t session = 0;
  TPM2B_DIGEST digest;
  if (!ReadU32(info, 0, &key) || !ReadSized(info, 1, &digest, "digest")) {
    return info.Env().Undefined();
  }
  if (info.Length() > 2 && !info[2].IsUndefined() && !ReadU32(info, 2, &session)) {
    return info.Env().Undefined();
  }
  const ESYS_TR auth = session == 0 ? ESYS_TR_PASSWORD : session;
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [key, digest, auth](ESYS_CONTEXT* esys, CallResult& r) {
    TPMT_TK_HASHCHECK validation = {};
    validation.tag = TPM2_ST_HASHCHECK;
    validation.hierarchy = TPM2_RH_NULL;
    TPMT_SIGNATURE* sig = nullptr;
    TSS2_RC rc = Esys_Sign(esys, key, auth, ESYS_TR_NONE, ESYS_TR_NONE, &digest,
                           &kNullScheme, &validation, &sig);
    if (rc != TSS2_RC_SUCCESS) return rc;
    std::vector<uint8_t> out;
    rc = Marshal(Tss2_MU_TPMT_SIGNATURE_Marshal, sig, out);
    Esys_Free(sig);
    r.single = true;
    r.bytes.emplace_back("signature", std::move(out));
    return rc;
  });
}

// transients() → how many transient objects/sessions this context has loaded (diagnostics).
Napi::Value EsysContext::Transients(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(transients.size()));
}

}  // namespace tpm_native
