// The peercred addon: the kernel's record of who is on the other end of a connected Unix socket.
// A separate target from tpm_native on purpose: it links nothing but libc, so a join-token agent
// or a server without tpm2-tss can still check its callers (admin socket, Workload API).
// Credentials come from the kernel (SO_PEERCRED / SO_PEERGROUPS are recorded at connect time and
// cannot be forged by the peer).
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <napi.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <vector>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59  // Linux 4.13+; older kernels answer ENOPROTOOPT
#endif

namespace {

// The kernel caps supplementary groups at NGROUPS_MAX (65536); refuse anything larger.
constexpr socklen_t kMaxGroupBytes = 65536 * sizeof(gid_t);

Napi::Value Fail(Napi::Env env, const char* what, int e) {
  Napi::Error err = Napi::Error::New(env, std::string(what) + " failed: " + strerror(e));
  err.Set("code", Napi::String::New(env, "ERR_PEERCRED"));
  err.Set("errno", Napi::Number::New(env, e));
  err.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "peerCred(fd) takes a file descriptor").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 0) return Fail(env, "SO_PEERCRED", EBADF);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return Fail(env, "SO_PEERCRED", errno);
  if (len != sizeof cred) return Fail(env, "SO_PEERCRED", EINVAL);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));

  // Supplementary groups as of connect(), from the kernel: no /proc race with a reused pid.
  std::vector<gid_t> groups(64);
  socklen_t glen = groups.size() * sizeof(gid_t);
  int rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
  if (rc != 0 && errno == ERANGE && glen > 0 && glen <= kMaxGroupBytes) {
    groups.resize(glen / sizeof(gid_t) + 1);
    glen = groups.size() * sizeof(gid_t);
    rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
  }
  if (rc == 0) {
    size_t n = glen / sizeof(gid_t);
    Napi::Array arr = Napi::Array::New(env, n);
    for (size_t i = 0; i < n; i++) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, groups[i]));
    out.Set("groups", arr);
  } else if (errno != ENOPROTOOPT) {
    // A kernel that has the option but cannot answer: refuse rather than guess.
    return Fail(env, "SO_PEERGROUPS", errno);
  }
  // ENOPROTOOPT (kernel < 4.13): no `groups`; callers then trust the primary gid only.
  return out;
}

// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. Node's dgram has no AF_UNIX,
// so these bytes move here; what to send (READY=1, STOPPING=1...) is decided in TypeScript.
// A path starting with '@' is an abstract socket. Returns 0 or the errno; it never throws for a
// send failure (the caller logs it: readiness must not crash a running service).
constexpr size_t kMaxNotifyBytes = 4096;

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "sdNotify(path, message) takes two strings").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string msg = info[1].As<Napi::String>().Utf8Value();
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path.size() < 2 || path.size() >= sizeof addr.sun_path || msg.size() > kMaxNotifyBytes) {
    return Napi::Number::New(env, EINVAL);
  }
  socklen_t len;
  if (path[0] == '@') {
    // Abstract namespace: a leading NUL, and the length says where the name ends.
    memcpy(addr.sun_path + 1, path.data() + 1, path.size() - 1);
    len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size());
  } else if (path[0] == '/') {
    memcpy(addr.sun_path, path.data(), path.size());
    len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size() + 1);
  } else {
    return Napi::Number::New(env, EAFNOSUPPORT);  // vsock: and friends are not for us
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, errno);
  ssize_t n = sendto(fd, msg.data(), msg.size(), MSG_NOSIGNAL,
                     reinterpret_cast<struct sockaddr*>(&addr), len);
  int e = n < 0 ? errno : (static_cast<size_t>(n) == msg.size() ? 0 : EMSGSIZE);
  close(fd);
  return Napi::Number::New(env, e);
}

// malloc_trim(0): glibc keeps memory freed after a burst (an agent sync issuing 1,000 SVIDs) in
// its arenas for good; this hands whole free pages back. No-op (false) on other C libraries.
Napi::Value TrimHeap(const Napi::CallbackInfo& info) {
#ifdef __GLIBC__
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
  exports.Set("trimHeap", Napi::Function::New(env, TrimHeap, "trimHeap"));
  // 2: sdNotify added. 3: trimHeap added.
  exports.Set("abiVersion", Napi::Number::New(env, 3));
  return exports;
}

}  // namespace

NODE_API_MODULE(peercred, Init)
