// peerCred(fd): the kernel's record of who is on the other end of a connected Unix socket.
// The Workload API attests callers from these credentials, so they must come from the kernel
// (SO_PEERCRED is set at connect time and cannot be forged by the peer).
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "esys_context.h"

namespace tpm_native {

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "peerCred(fd) takes a file descriptor").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) {
    int e = fd < 0 ? EBADF : errno;
    Napi::Error err = Napi::Error::New(env, std::string("SO_PEERCRED failed: ") + strerror(e));
    err.Set("code", Napi::String::New(env, "ERR_PEERCRED"));
    err.Set("errno", Napi::Number::New(env, e));
    err.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

}  // namespace tpm_native
