// Policy sessions: start one, extend its digest (PolicySecret, PolicyOR, PolicyPCR), read it back.
// Bytes and handles only: which policy an object needs, and whether the current PCRs can satisfy
// it, is decided in TypeScript (src/tpm/policy.ts). A session started here is in the context's
// transient set until TypeScript flushes it.
#include "esys_context.h"
#include "marshal.h"

namespace tpm_native {

// startPolicySession(hashAlg) → {handle}: an unbound, unsalted policy session that stays open
// after use (continueSession) until TypeScript flushes it. The hash must be the nameAlg of the
// object whose policy it satisfies (SHA-384 for a high-range P-384 EK).
Napi::Value EsysContext::StartPolicySession(const Napi::CallbackInfo& info) {
  uint32_t hashAlg;
  if (!ReadU32(info, 0, &hashAlg)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [hashAlg](ESYS_CONTEXT* esys, CallResult& r) {
    TPMT_SYM_DEF symmetric = {TPM2_ALG_NULL, {}, {}};
    ESYS_TR session = ESYS_TR_NONE;
    TSS2_RC rc = Esys_StartAuthSession(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       ESYS_TR_NONE, ESYS_TR_NONE, nullptr, TPM2_SE_POLICY,
                                       &symmetric, static_cast<TPMI_ALG_HASH>(hashAlg), &session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = Esys_TRSess_SetAttributes(esys, session, TPMA_SESSION_CONTINUESESSION, 0xff);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_FlushContext(esys, session);
      return rc;
    }
    r.created.push_back(session);
    r.numbers.emplace_back("handle", session);
    return rc;
  });
}

// policySecret(session, hierarchy): PolicySecret with the hierarchy's (empty) auth, which is
// what the TCG EK policy asks for.
Napi::Value EsysContext::PolicySecret(const Napi::CallbackInfo& info) {
  uint32_t session, hierarchy;
  if (!ReadU32(info, 0, &session) || !ReadU32(info, 1, &hierarchy)) return info.Env().Undefined();
  ESYS_TR h = HierarchyTr(hierarchy);
  if (h == ESYS_TR_NONE) {
    Napi::RangeError::New(info.Env(), "policySecret takes a hierarchy handle")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [session, h](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_TIMEOUT* timeout = nullptr;
    TPMT_TK_AUTH* ticket = nullptr;
    TSS2_RC rc = Esys_PolicySecret(esys, h, session, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                   nullptr, nullptr, nullptr, 0, &timeout, &ticket);
    Esys_Free(timeout);
    Esys_Free(ticket);
    r.numbers.emplace_back("ok", 1);
    return rc;
  });
}

// policyOr(session, digests: TPML_DIGEST): the high-range EK templates put PolicySecret in one
// branch of a PolicyOR.
Napi::Value EsysContext::PolicyOr(const Napi::CallbackInfo& info) {
  uint32_t session;
  TPML_DIGEST digests;
  if (!ReadU32(info, 0, &session) ||
      !Unmarshal(info, 1, Tss2_MU_TPML_DIGEST_Unmarshal, &digests, "TPML_DIGEST")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [session, digests](ESYS_CONTEXT* esys, CallResult& r) {
    r.numbers.emplace_back("ok", 1);
    return Esys_PolicyOR(esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &digests);
  });
}

// policyPcr(session, pcrDigest, selection: TPML_PCR_SELECTION): PolicyPCR over the selected PCRs.
// An empty pcrDigest lets the TPM use the current values (the session's digest then matches an
// object's authPolicy only if they are the values the policy was made for); a non-empty one is
// checked against them (TPM_RC_VALUE when they differ).
Napi::Value EsysContext::PolicyPcr(const Napi::CallbackInfo& info) {
  uint32_t session;
  TPM2B_DIGEST pcrDigest;
  TPML_PCR_SELECTION selection;
  if (!ReadU32(info, 0, &session) || !ReadSized(info, 1, &pcrDigest, "pcrDigest") ||
      !Unmarshal(info, 2, Tss2_MU_TPML_PCR_SELECTION_Unmarshal, &selection, "TPML_PCR_SELECTION")) {
    return info.Env().Undefined();
  }
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [session, pcrDigest, selection](ESYS_CONTEXT* esys, CallResult& r) {
    r.numbers.emplace_back("ok", 1);
    return Esys_PolicyPCR(esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pcrDigest,
                          &selection);
  });
}

// policyGetDigest(session) → the session's current policy digest (raw bytes).
Napi::Value EsysContext::PolicyGetDigest(const Napi::CallbackInfo& info) {
  uint32_t session;
  if (!ReadU32(info, 0, &session)) return info.Env().Undefined();
  if (!Acquire(info)) return info.Env().Undefined();
  return RunOnPool(info, this, [session](ESYS_CONTEXT* esys, CallResult& r) {
    TPM2B_DIGEST* digest = nullptr;
    TSS2_RC rc = Esys_PolicyGetDigest(esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                      &digest);
    if (rc != TSS2_RC_SUCCESS) return rc;
    r.single = true;
    r.bytes.emplace_back("digest",
                         std::vector<uint8_t>(digest->buffer, digest->buffer + digest->size));
    Esys_Free(digest);
    return rc;
  });
}

}  // namespace tpm_native
