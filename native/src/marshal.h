// Argument readers shared by the command files: marshaled TPM structures in, checked exactly.
#pragma once

#include <tss2/tss2_mu.h>

#include <cstring>
#include <string>
#include <vector>

#include "esys_context.h"

namespace tpm_native {

// Unmarshals argument i exactly (no trailing bytes): a structure that does not parse is
// ERR_TPM_STRUCTURE, thrown synchronously before anything reaches the TPM.
template <typename T>
inline bool Unmarshal(const Napi::CallbackInfo& info, size_t i,
               TSS2_RC (*fn)(const uint8_t*, size_t, size_t*, T*), T* out, const char* what) {
  std::vector<uint8_t> bytes;
  if (!ReadBytes(info, i, &bytes)) return false;
  size_t offset = 0;
  *out = {};
  TSS2_RC rc = fn(bytes.data(), bytes.size(), &offset, out);
  if (rc != TSS2_RC_SUCCESS || offset != bytes.size()) {
    Napi::Error err = Napi::Error::New(info.Env(), std::string("malformed ") + what);
    err.Set("code", Napi::String::New(info.Env(), "ERR_TPM_STRUCTURE"));
    err.ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// Raw bytes into a sized buffer (TPM2B_DATA, TPM2B_DIGEST): too long is a RangeError.
template <typename T>
inline bool ReadSized(const Napi::CallbackInfo& info, size_t i, T* out, const char* what) {
  std::vector<uint8_t> bytes;
  if (!ReadBytes(info, i, &bytes)) return false;
  *out = {};
  if (bytes.size() > sizeof(out->buffer)) {
    Napi::RangeError::New(info.Env(), std::string(what) + " is too long")
        .ThrowAsJavaScriptException();
    return false;
  }
  out->size = static_cast<UINT16>(bytes.size());
  std::memcpy(out->buffer, bytes.data(), bytes.size());
  return true;
}

}  // namespace tpm_native
