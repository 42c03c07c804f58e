// N-API glue: converts JS values to the plain C++ layer (sys.h, vcpu.h) and back.
// The only file that includes napi.h.
#include <napi.h>
#include <uv.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <linux/kvm.h>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <atomic>

#include "nsspawn.h"
#include "privileges.h"
#include "seccomp.h"
#include "sys.h"
#include "uring.h"
#include "vcpu.h"

using namespace kvmnative;

namespace {

// The close callback of the addon's libuv handles is libc's free(), not a function of this library:
// when a worker thread ends, Node may unload the worker's copy of the addon before libuv runs the
// close callbacks of handles closed during the environment's teardown (a crash in uv__finish_close).
// free(void*) and uv_close_cb(uv_handle_t*) both take one pointer and return nothing; the handles are
// malloc'ed for this.
const uv_close_cb freeClosedHandle = reinterpret_cast<uv_close_cb>(reinterpret_cast<void (*)()>(&std::free));

Napi::Error errnoError(Napi::Env env, int negErrno, const char* syscall, const std::string& detail = "") {
  int e = -negErrno;
  std::string msg = std::string(syscall) + " failed: " + uv_err_name(-e) + " (" + strerror(e) + ")";
  if (!detail.empty()) msg += ": " + detail;
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("code", Napi::String::New(env, uv_err_name(-e)));
  err.Set("errno", Napi::Number::New(env, e));
  err.Set("syscall", Napi::String::New(env, syscall));
  return err;
}

int argFd(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(info.Env(), "fd must be >= 0");
  return fd;
}

uint64_t argU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info[i].IsBigInt()) {
    bool lossless = true;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(info.Env(), std::string(name) + " does not fit in 64 bits");
    return v;
  }
  if (info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (d < 0 || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::RangeError::New(info.Env(), std::string(name) + " must be a non-negative integer");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number or bigint");
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  int flags = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 2 /* O_RDWR */;
  int fd = sysOpen(path.c_str(), flags);
  if (fd < 0) throw errnoError(env, fd, "open", path);
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int r = sysClose(argFd(info, 0));
  if (r < 0) throw errnoError(info.Env(), r, "close");
  return info.Env().Undefined();
}

// ioctl(fd, request, arg): arg is an integer (passed by value) or an
// ArrayBufferView (passed by pointer; its length is checked against the request).
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "request must be a number");
  unsigned long req = static_cast<unsigned long>(info[1].As<Napi::Number>().Int64Value()) & 0xffffffffUL;
  long r;
  if (info.Length() < 3 || info[2].IsUndefined()) {
    r = sysIoctlInt(fd, req, 0);
  } else if (info[2].IsTypedArray() || info[2].IsDataView()) {
    void* p;
    size_t len;
    if (info[2].IsTypedArray()) {
      auto ta = info[2].As<Napi::TypedArray>();
      p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      len = ta.ByteLength();
    } else {
      auto dv = info[2].As<Napi::DataView>();
      p = static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
      len = dv.ByteLength();
    }
    // SAFETY: p/len describe a live JS buffer for the duration of this synchronous call.
    r = sysIoctlPtr(fd, req, p, len);
  } else {
    r = sysIoctlInt(fd, req, static_cast<unsigned long>(argU64(info, 2, "arg")));
  }
  if (r < 0) {
    char name[32];
    snprintf(name, sizeof name, "ioctl(0x%lx)", req);
    throw errnoError(env, static_cast<int>(r), "ioctl", name);
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "view must be a TypedArray");
  auto ta = info[0].As<Napi::TypedArray>();
  auto p = reinterpret_cast<uint64_t>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  return Napi::BigInt::New(env, p);
}

// u64 words of a TypedArray (8-byte aligned), for bitmaps shared with another
// process through a MAP_SHARED mapping (the vhost dirty log). JS Atomics are
// only defined on SharedArrayBuffers; these use the compiler's atomic builtins.
uint64_t* wordsOf(Napi::Env env, const Napi::Value& v, size_t* count) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(env, "bitmap must be a TypedArray");
  auto ta = v.As<Napi::TypedArray>();
  auto* p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0 || ta.ByteLength() % 8 != 0)
    throw Napi::RangeError::New(env, "bitmap must be 8-byte aligned and a multiple of 8 bytes long");
  *count = ta.ByteLength() / 8;
  return reinterpret_cast<uint64_t*>(p);
}

// atomicOr64(bitmap, wordIndex, mask: bigint): atomic OR of one u64 word.
Napi::Value AtomicOr64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n;
  uint64_t* w = wordsOf(env, info[0], &n);
  uint64_t i = argU64(info, 1, "wordIndex");
  if (i >= n) throw Napi::RangeError::New(env, "wordIndex beyond the bitmap");
  if (!info[2].IsBigInt()) throw Napi::TypeError::New(env, "mask must be a bigint");
  bool lossless;
  uint64_t mask = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
  __atomic_fetch_or(&w[i], mask, __ATOMIC_SEQ_CST);
  return env.Undefined();
}

// atomicFetchClear64(bitmap, out): for every u64 word, out[i] = exchange(bitmap[i], 0).
// Words that read zero are skipped without a locked operation. Returns the
// number of non-zero words taken.
Napi::Value AtomicFetchClear64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n, m;
  uint64_t* w = wordsOf(env, info[0], &n);
  uint64_t* out = wordsOf(env, info[1], &m);
  if (m < n) throw Napi::RangeError::New(env, "out is shorter than the bitmap");
  uint32_t taken = 0;
  for (size_t i = 0; i < n; i++) {
    if (__atomic_load_n(&w[i], __ATOMIC_RELAXED) == 0) {
      out[i] = 0;
      continue;
    }
    out[i] = __atomic_exchange_n(&w[i], 0, __ATOMIC_SEQ_CST);
    if (out[i]) taken++;
  }
  return Napi::Number::New(env, taken);
}

// ---- mappings ---------------------------------------------------------------
//
// One mmap can be handed to JS as several external ArrayBuffers ("pieces"):
// V8 limits one ArrayBuffer (4 GiB in Node 20), guest RAM can be far larger.
// Every piece holds one reference on the Mapping; the last one released
// unmaps it. All of this runs on the JS thread of the env that made it.

struct Mapping {
  void* addr;
  size_t size;
  size_t refs;
};

void releaseMapping(Mapping* m) {
  if (--m->refs > 0) return;
  // SAFETY: no ArrayBuffer over the mapping is left (each held a reference).
  sysMunmap(m->addr, m->size);
  delete m;
}

void pieceFinalizer(napi_env, void*, void* hint) { releaseMapping(static_cast<Mapping*>(hint)); }

// Piece lengths from an optional JS array (argument i): their sum must be
// `size` and each must be page-sized. Absent: one piece of `size`.
std::vector<uint64_t> argPieces(const Napi::CallbackInfo& info, size_t i, uint64_t size) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || info[i].IsUndefined()) return {size};
  if (!info[i].IsArray()) throw Napi::TypeError::New(env, "pieces must be an array of lengths");
  Napi::Array a = info[i].As<Napi::Array>();
  if (a.Length() == 0 || a.Length() > 4096) throw Napi::RangeError::New(env, "pieces must have 1 to 4096 lengths");
  std::vector<uint64_t> out;
  uint64_t sum = 0;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsNumber()) throw Napi::TypeError::New(env, "a piece length must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d > 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)) ||
        static_cast<uint64_t>(d) % 4096)
      throw Napi::RangeError::New(env, "a piece length must be a positive multiple of 4096");
    out.push_back(static_cast<uint64_t>(d));
    sum += out.back();
  }
  if (sum != size) throw Napi::RangeError::New(env, "piece lengths must add up to the mapping size");
  return out;
}

// {address, buffer, buffers}: one external ArrayBuffer per piece of the mapping
// at `addr` (buffer = buffers[0]). Takes ownership of the mapping: on success
// and on every failure it is unmapped exactly once, after the last piece is
// collected (or here, when no piece was made).
Napi::Object mappingResult(Napi::Env env, void* addr, size_t size, const std::vector<uint64_t>& pieces) {
  auto* m = new Mapping{addr, size, 1};  // this function's own reference, dropped below
  Napi::Array buffers;
  uint64_t off = 0;
  std::string failure;
  try {
    buffers = Napi::Array::New(env, pieces.size());
  } catch (...) {
    releaseMapping(m);
    throw;
  }
  for (uint32_t k = 0; k < pieces.size(); k++) {
    m->refs++;  // the piece's reference, released by pieceFinalizer
    napi_value ab;
    // The raw call, not Napi::ArrayBuffer::New: when Node refuses the length it
    // runs the finalizer itself and node-addon-api then frees its own finalizer
    // data a second time (the "double free" of large --memory). Here the
    // finalizer is ours: Node releases that piece's reference, now or later.
    napi_status st = napi_create_external_arraybuffer(env, static_cast<char*>(addr) + off, pieces[k], pieceFinalizer, m, &ab);
    if (st != napi_ok) {
      failure = "cannot create an ArrayBuffer of " + std::to_string(pieces[k]) + " bytes over the mapping";
      if (env.IsExceptionPending()) {
        Napi::Error pending = env.GetAndClearPendingException();
        failure += ": " + pending.Message();
      }
      break;
    }
    try {
      buffers.Set(k, Napi::Value(env, ab));  // the piece is collected (and releases its reference) even if this throws
    } catch (...) {
      releaseMapping(m);
      throw;
    }
    off += pieces[k];
  }
  releaseMapping(m);
  if (!failure.empty()) throw Napi::RangeError::New(env, failure);
  Napi::Object o = Napi::Object::New(env);
  o.Set("address", Napi::BigInt::New(env, reinterpret_cast<uint64_t>(addr)));
  o.Set("buffer", buffers.Get(0u));
  o.Set("buffers", buffers);
  return o;
}

Napi::Value MemfdMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
  std::string name = info[0].As<Napi::String>();
  uint64_t size = argU64(info, 1, "size");
  if (size == 0) throw Napi::RangeError::New(env, "size must be > 0");
  std::vector<uint64_t> pieces = argPieces(info, 2, size);
  int fd;
  void* addr;
  int r = sysMemfdMap(name.c_str(), size, &fd, &addr);
  if (r < 0) throw errnoError(env, r, "memfd_create/mmap", name);
  Napi::Object o;
  try {
    o = mappingResult(env, addr, size, pieces);  // owns the mapping from here, even when it throws
  } catch (...) {
    sysClose(fd);
    throw;
  }
  o.Set("fd", Napi::Number::New(env, fd));
  return o;
}

Napi::Value MmapFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  uint64_t size = argU64(info, 1, "size");
  uint64_t offset = info.Length() > 2 && !info[2].IsUndefined() ? argU64(info, 2, "offset") : 0;
  if (size == 0) throw Napi::RangeError::New(env, "size must be > 0");
  std::vector<uint64_t> pieces = argPieces(info, 3, size);
  void* addr;
  int r = sysMmapFd(fd, size, static_cast<long>(offset), &addr);
  if (r < 0) throw errnoError(env, r, "mmap");
  return mappingResult(env, addr, size, pieces);
}

// [start, end) pairs, flattened, of the parts of [offset, offset+len) of `fd`
// that hold data (SEEK_DATA/SEEK_HOLE); the rest are holes, which read as
// zeroes. Reading a memfd hole through a shared mapping allocates a page, so
// a migration pass over mostly untouched guest RAM skips the holes instead.
// Past 65536 extents the remainder counts as data.
Napi::Value DataExtents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  int64_t off = static_cast<int64_t>(argU64(info, 1, "offset"));
  int64_t end = off + static_cast<int64_t>(argU64(info, 2, "len"));
  std::vector<int64_t> out;
  while (off < end) {
    int64_t d = sysSeek(fd, off, SEEK_DATA);
    if (d == -ENXIO) break;  // only a hole from here
    if (d < 0) throw errnoError(env, static_cast<int>(d), "lseek(SEEK_DATA)");
    if (d >= end) break;
    int64_t h = sysSeek(fd, d, SEEK_HOLE);
    if (h < 0) throw errnoError(env, static_cast<int>(h), "lseek(SEEK_HOLE)");
    if (out.size() >= 2 * 65536) h = end;
    out.push_back(d);
    out.push_back(h < end ? h : end);
    off = h;
  }
  Napi::Array a = Napi::Array::New(env, out.size());
  for (uint32_t i = 0; i < out.size(); i++) a.Set(i, Napi::Number::New(env, static_cast<double>(out[i])));
  return a;
}

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned init = info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0;
  int flags = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : (EFD_NONBLOCK | EFD_CLOEXEC);
  int fd = sysEventfd(init, flags);
  if (fd < 0) throw errnoError(env, fd, "eventfd");
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t v = 0;
  int r = sysEventfdRead(argFd(info, 0), &v);
  if (r < 0) throw errnoError(env, r, "read(eventfd)");
  if (r == 0) return Napi::BigInt::New(env, static_cast<uint64_t>(0));
  return Napi::BigInt::New(env, v);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  uint64_t v = info.Length() > 1 ? argU64(info, 1, "value") : 1;
  int r = sysEventfdWrite(fd, v);
  if (r < 0) throw errnoError(env, r, "write(eventfd)");
  return env.Undefined();
}

// gettid(): the calling thread's kernel thread id (an iothread reports its own for query-iothreads).
Napi::Value Gettid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  int mode = info[1].As<Napi::Number>().Int32Value();
  uint64_t off = argU64(info, 2, "offset");
  uint64_t len = argU64(info, 3, "len");
  int r = sysFallocate(fd, mode, static_cast<int64_t>(off), static_cast<int64_t>(len));
  if (r < 0) throw errnoError(env, r, "fallocate");
  return env.Undefined();
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  int fd = sysUnixListen(path.c_str(), 8);
  if (fd < 0) throw errnoError(env, fd, "listen", path);
  return Napi::Number::New(env, fd);
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  int fd = sysUnixConnect(path.c_str());
  if (fd < 0) throw errnoError(env, fd, "connect", path);
  return Napi::Number::New(env, fd);
}

// Returns the new fd, or -1 when no connection is waiting.
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  int fd = sysUnixAccept(argFd(info, 0));
  if (fd == -EAGAIN || fd == -EWOULDBLOCK) return Napi::Number::New(info.Env(), -1);
  if (fd < 0) throw errnoError(info.Env(), fd, "accept");
  return Napi::Number::New(info.Env(), fd);
}

uint8_t* viewData(const Napi::Value& v, size_t* len) {
  auto ta = v.As<Napi::TypedArray>();
  *len = ta.ByteLength();
  return static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
}

// sendFds(fd, bytes: Uint8Array, fds: number[]): bytes sent.
Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  if (!info[1].IsTypedArray()) throw Napi::TypeError::New(env, "data must be a Uint8Array");
  if (!info[2].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
  auto arr = info[2].As<Napi::Array>();
  if (arr.Length() > 64) throw Napi::RangeError::New(env, "at most 64 fds per message");
  int fds[64];
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value e = arr.Get(i);
    if (!e.IsNumber() || e.As<Napi::Number>().Int32Value() < 0) throw Napi::TypeError::New(env, "fds must be non-negative numbers");
    fds[i] = e.As<Napi::Number>().Int32Value();
  }
  size_t len;
  uint8_t* p = viewData(info[1], &len);
  // SAFETY: p/len describe a live JS buffer for the duration of this synchronous call.
  long r = sysSendFds(fd, p, len, fds, static_cast<int>(arr.Length()));
  if (r < 0) throw errnoError(env, static_cast<int>(r), "sendmsg");
  return Napi::Number::New(env, static_cast<double>(r));
}

// recvFds(fd, buf: Uint8Array, maxFds): { bytes, fds }.
Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  if (!info[1].IsTypedArray()) throw Napi::TypeError::New(env, "buf must be a Uint8Array");
  int maxFds = info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 0;
  if (maxFds < 0 || maxFds > 64) throw Napi::RangeError::New(env, "maxFds must be in [0, 64]");
  size_t len;
  uint8_t* p = viewData(info[1], &len);
  int fds[64];
  int n = 0;
  // SAFETY: p/len describe a live JS buffer for the duration of this synchronous call.
  long r = sysRecvFds(fd, p, len, fds, maxFds, &n);
  if (r < 0) throw errnoError(env, static_cast<int>(r), "recvmsg");
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(r)));
  Napi::Array a = Napi::Array::New(env, n);
  for (int i = 0; i < n; i++) a.Set(i, Napi::Number::New(env, fds[i]));
  o.Set("fds", a);
  return o;
}

Napi::Value PollIn(const Napi::CallbackInfo& info) {
  int fd = argFd(info, 0);
  int ms = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : -1;
  int r = sysPollIn(fd, ms);
  if (r < 0) throw errnoError(info.Env(), r, "poll");
  return Napi::Boolean::New(info.Env(), r == 1);
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  int r = sysDup(argFd(info, 0));
  if (r < 0) throw errnoError(info.Env(), r, "dup");
  return Napi::Number::New(info.Env(), r);
}

// --- frame I/O: several readv/writev calls on one fd in one call ---
//
// Buffers are named, not passed as views: `bases` is an array of Uint8Arrays
// (e.g. guest RAM's buffers); `iov` holds (base index, byte offset, length)
// triples; `groups[i]` is how many consecutive triples make request i. Every
// triple is checked against its base here, so a wrong one fails its request
// (EFAULT) and never reaches the kernel.

constexpr uint32_t kFrameIovMax = 1024;  // UIO_MAXIOV

struct FrameBatch {
  std::vector<std::pair<uint8_t*, size_t>> bases;
  const double* iov = nullptr;
  size_t iovLen = 0;  // doubles
  const uint32_t* groups = nullptr;
  int32_t* results = nullptr;
  uint32_t count = 0;
};

FrameBatch frameBatchArgs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FrameBatch b;
  if (!info[1].IsArray()) throw Napi::TypeError::New(env, "bases must be an array of Uint8Arrays");
  auto arr = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "bases must be an array of Uint8Arrays");
    size_t len;
    uint8_t* p = viewData(v, &len);
    b.bases.emplace_back(p, len);
  }
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    throw Napi::TypeError::New(env, "iov must be a Float64Array");
  auto iov = info[2].As<Napi::Float64Array>();
  b.iov = iov.Data();
  b.iovLen = iov.ElementLength();
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    throw Napi::TypeError::New(env, "groups must be a Uint32Array");
  auto groups = info[3].As<Napi::Uint32Array>();
  b.groups = groups.Data();
  if (!info[4].IsNumber()) throw Napi::TypeError::New(env, "count must be a number");
  int64_t count = info[4].As<Napi::Number>().Int64Value();
  if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(env, "results must be an Int32Array");
  auto results = info[5].As<Napi::Int32Array>();
  b.results = results.Data();
  if (count < 0 || static_cast<size_t>(count) > groups.ElementLength() || static_cast<size_t>(count) > results.ElementLength())
    throw Napi::RangeError::New(env, "count must be in [0, min(groups.length, results.length)]");
  b.count = static_cast<uint32_t>(count);
  return b;
}

// Fills `out` with request i's iovecs (from triple *next on); 0, or -errno for this request alone.
int frameIovecs(const FrameBatch& b, uint32_t i, size_t* next, std::vector<struct iovec>& out, size_t* total) {
  uint32_t n = b.groups[i];
  out.clear();
  *total = 0;
  size_t first = *next;
  *next += n;
  if (n > kFrameIovMax || (first + n) * 3 > b.iovLen) return -EINVAL;
  for (uint32_t k = 0; k < n; k++) {
    const double* t = b.iov + (first + k) * 3;
    double base = t[0], off = t[1], len = t[2];
    if (!(base >= 0 && base < static_cast<double>(b.bases.size()) && base == static_cast<double>(static_cast<size_t>(base))))
      return -EFAULT;
    const auto& bb = b.bases[static_cast<size_t>(base)];
    if (!(off >= 0 && len >= 0 && off == static_cast<double>(static_cast<uint64_t>(off)) &&
          len == static_cast<double>(static_cast<uint64_t>(len)) && off + len <= static_cast<double>(bb.second)))
      return -EFAULT;
    out.push_back({bb.first + static_cast<size_t>(off), static_cast<size_t>(len)});
    *total += static_cast<size_t>(len);
    if (*total > 0x7fffffff) return -EINVAL;  // the result is an int32
  }
  return 0;
}

// writevFrames(fd, bases, iov, groups, count, results): one writev per request, every
// request tried; results[i] = bytes written or -errno. Returns count.
Napi::Value WritevFrames(const Napi::CallbackInfo& info) {
  int fd = argFd(info, 0);
  FrameBatch b = frameBatchArgs(info);
  std::vector<struct iovec> iov;
  iov.reserve(16);
  size_t next = 0, total = 0;
  for (uint32_t i = 0; i < b.count; i++) {
    int r = frameIovecs(b, i, &next, iov, &total);
    // SAFETY: every iovec lies inside a live JS buffer (checked above) for this synchronous call.
    b.results[i] = r < 0 ? r : static_cast<int32_t>(sysWritev(fd, iov.data(), static_cast<int>(iov.size())));
  }
  return Napi::Number::New(info.Env(), b.count);
}

// readvFrames(fd, bases, iov, groups, count, results, spill?): one readv per request into
// its iovecs (followed by `spill`, a Uint8Array, when given), in order, until the fd has
// nothing more (EAGAIN: that request gets no result) or a read fails (results[i] = -errno)
// or a read spilled (it was longer than the request's own iovecs: the rest is at the start
// of `spill`, so nothing more is read). results[i] = bytes read. Returns how many requests
// got a result.
Napi::Value ReadvFrames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = argFd(info, 0);
  FrameBatch b = frameBatchArgs(info);
  uint8_t* spill = nullptr;
  size_t spillLen = 0;
  if (info.Length() > 6 && !info[6].IsUndefined() && !info[6].IsNull()) {
    if (!info[6].IsTypedArray() || info[6].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "spill must be a Uint8Array");
    spill = viewData(info[6], &spillLen);
  }
  std::vector<struct iovec> iov;
  iov.reserve(17);
  size_t next = 0, total = 0;
  for (uint32_t i = 0; i < b.count; i++) {
    int r = frameIovecs(b, i, &next, iov, &total);
    if (r < 0) {
      b.results[i] = r;
      return Napi::Number::New(env, i + 1);
    }
    if (spill && spillLen) iov.push_back({spill, spillLen});
    if (iov.size() > kFrameIovMax) {
      b.results[i] = -EINVAL;
      return Napi::Number::New(env, i + 1);
    }
    // SAFETY: every iovec lies inside a live JS buffer (checked above) for this synchronous call.
    long n = sysReadv(fd, iov.data(), static_cast<int>(iov.size()));
    if (n == -EAGAIN || n == -EWOULDBLOCK) return Napi::Number::New(env, i);
    b.results[i] = static_cast<int32_t>(n);
    if (n < 0 || static_cast<size_t>(n) > total) return Napi::Number::New(env, i + 1);
  }
  return Napi::Number::New(env, b.count);
}

// --- credentials (privileges.h): generic calls, the order is the caller's ---

uint32_t argId(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (d < 0 || d > 4294967294.0 || d != static_cast<double>(static_cast<uint32_t>(d)))
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be an id from 0 to 4294967294");
  return static_cast<uint32_t>(d);
}

Napi::Value Chroot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "dir must be a string");
  std::string dir = info[0].As<Napi::String>();
  int r = privChroot(dir.c_str());
  if (r < 0) throw errnoError(env, r, "chroot", dir);
  return env.Undefined();
}

Napi::Value SetGroups(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "groups must be an array");
  Napi::Array a = info[0].As<Napi::Array>();
  if (a.Length() > 65536) throw Napi::RangeError::New(env, "too many groups");
  std::vector<uint32_t> gids;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value v = a.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (d < 0 || d > 4294967294.0 || d != static_cast<double>(static_cast<uint32_t>(d)))
      throw Napi::RangeError::New(env, "groups must hold ids from 0 to 4294967294");
    gids.push_back(static_cast<uint32_t>(d));
  }
  int r = privSetGroups(gids);
  if (r < 0) throw errnoError(env, r, "setgroups");
  return env.Undefined();
}

Napi::Value SetResGid(const Napi::CallbackInfo& info) {
  int r = privSetResGid(argId(info, 0, "rgid"), argId(info, 1, "egid"), argId(info, 2, "sgid"));
  if (r < 0) throw errnoError(info.Env(), r, "setresgid");
  return info.Env().Undefined();
}

Napi::Value SetResUid(const Napi::CallbackInfo& info) {
  int r = privSetResUid(argId(info, 0, "ruid"), argId(info, 1, "euid"), argId(info, 2, "suid"));
  if (r < 0) throw errnoError(info.Env(), r, "setresuid");
  return info.Env().Undefined();
}

Napi::Value DropCapabilityBounding(const Napi::CallbackInfo& info) {
  int r = privDropBoundingAndAmbient();
  if (r < 0) throw errnoError(info.Env(), r, "prctl(PR_CAPBSET_DROP)");
  return info.Env().Undefined();
}

Napi::Value ClearCapabilities(const Napi::CallbackInfo& info) {
  int r = privClearCapabilities();
  if (r < 0) throw errnoError(info.Env(), r, "capset");
  return info.Env().Undefined();
}

Napi::Value LookupUser(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
  std::string name = info[0].As<Napi::String>();
  uint32_t uid = 0, gid = 0;
  std::vector<uint32_t> groups;
  int r = privLookupUser(name.c_str(), &uid, &gid, &groups);
  if (r == -ENOENT) return env.Null();
  if (r < 0) throw errnoError(env, r, "getpwnam_r", name);
  Napi::Object o = Napi::Object::New(env);
  o.Set("uid", Napi::Number::New(env, uid));
  o.Set("gid", Napi::Number::New(env, gid));
  Napi::Array g = Napi::Array::New(env, groups.size());
  for (size_t i = 0; i < groups.size(); i++) g.Set(static_cast<uint32_t>(i), Napi::Number::New(env, groups[i]));
  o.Set("groups", g);
  return o;
}

// --- namespaces (nsspawn.h): a process in new namespaces under a new root; the jail's layout is the caller's ---

static std::string strProp(Napi::Object o, const char* k, bool required = true) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined() && !required) return "";
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be a string");
  std::string s = v.As<Napi::String>();
  if (s.find('\0') != std::string::npos) throw Napi::TypeError::New(o.Env(), std::string(k) + " must not hold a NUL byte");
  return s;
}

static std::vector<std::string> strArray(Napi::Object o, const char* k) {
  Napi::Value v = o.Get(k);
  if (!v.IsArray()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be an array of strings");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > 65536) throw Napi::RangeError::New(o.Env(), std::string(k) + ": too many entries");
  std::vector<std::string> out;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsString()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be an array of strings");
    std::string s = e.As<Napi::String>();
    if (s.find('\0') != std::string::npos) throw Napi::TypeError::New(o.Env(), std::string(k) + " must not hold a NUL byte");
    out.push_back(s);
  }
  return out;
}

static uint32_t idProp(Napi::Object o, const char* k) {
  Napi::Value v = o.Get(k);
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (d < 0 || d > 4294967294.0 || d != static_cast<double>(static_cast<uint32_t>(d)))
    throw Napi::RangeError::New(o.Env(), std::string(k) + " must be an id from 0 to 4294967294");
  return static_cast<uint32_t>(d);
}

static int intProp(Napi::Object o, const char* k, int def, int min, int max) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return def;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : min - 1.0;
  if (d < min || d > max || d != static_cast<double>(static_cast<int>(d)))
    throw Napi::RangeError::New(o.Env(), std::string(k) + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
  return static_cast<int>(d);
}

Napi::Value NsSpawn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "nsSpawn(spec: object)");
  Napi::Object o = info[0].As<Napi::Object>();
  NsSpawnSpec s;
  s.cloneFlags = intProp(o, "cloneFlags", 0, 0, 0x7fffffff);
  s.netnsFd = intProp(o, "netnsFd", -1, -1, 0x7fffffff);
  s.hostname = strProp(o, "hostname", false);
  s.root = strProp(o, "root");
  s.file = strProp(o, "file");
  s.argv = strArray(o, "argv");
  s.env = strArray(o, "env");
  if (s.argv.empty()) throw Napi::RangeError::New(env, "argv must not be empty");
  s.uid = idProp(o, "uid");
  s.gid = idProp(o, "gid");
  s.parentDeathSignal = intProp(o, "parentDeathSignal", 0, 0, 64);
  s.init = o.Get("init").ToBoolean();
  if (s.init && !(s.cloneFlags & CLONE_NEWPID)) throw Napi::TypeError::New(env, "init needs a new PID namespace");
  Napi::Value g = o.Get("groups");
  if (!g.IsArray()) throw Napi::TypeError::New(env, "groups must be an array of ids");
  Napi::Array ga = g.As<Napi::Array>();
  if (ga.Length() > 65536) throw Napi::RangeError::New(env, "too many groups");
  for (uint32_t i = 0; i < ga.Length(); i++) {
    Napi::Object w = Napi::Object::New(env);
    w.Set("g", ga.Get(i));
    s.groups.push_back(idProp(w, "g"));
  }
  Napi::Value k = o.Get("keepFds");
  if (!k.IsUndefined()) {
    if (!k.IsArray()) throw Napi::TypeError::New(env, "keepFds must be an array of fds");
    Napi::Array ka = k.As<Napi::Array>();
    for (uint32_t i = 0; i < ka.Length() && i < 1024; i++) {
      Napi::Object w = Napi::Object::New(env);
      w.Set("fd", ka.Get(i));
      s.keepFds.push_back(intProp(w, "fd", -1, 3, 0x7fffffff));
    }
  }
  Napi::Value m = o.Get("mounts");
  if (!m.IsArray()) throw Napi::TypeError::New(env, "mounts must be an array");
  Napi::Array ma = m.As<Napi::Array>();
  if (ma.Length() > 4096) throw Napi::RangeError::New(env, "too many mounts");
  for (uint32_t i = 0; i < ma.Length(); i++) {
    if (!ma.Get(i).IsObject()) throw Napi::TypeError::New(env, "mounts[] must be objects");
    Napi::Object mo = ma.Get(i).As<Napi::Object>();
    std::string kind = strProp(mo, "kind");
    NsMount nm;
    if (kind == "bind") nm.kind = 0;
    else if (kind == "proc") nm.kind = 1;
    else throw Napi::TypeError::New(env, "mounts[].kind must be bind or proc");
    nm.source = nm.kind == 0 ? strProp(mo, "source") : "";
    nm.target = strProp(mo, "target");
    nm.readOnly = mo.Get("readOnly").ToBoolean();
    s.mounts.push_back(nm);
  }
  NsSpawnResult r{};
  int e = nsSpawn(s, &r);
  if (e < 0) throw errnoError(env, e, "clone");
  Napi::Object res = Napi::Object::New(env);
  res.Set("pid", Napi::Number::New(env, r.pid));
  res.Set("releaseFd", Napi::Number::New(env, r.releaseFd));
  res.Set("statusFd", Napi::Number::New(env, r.statusFd));
  return res;
}

Napi::Value MknodChar(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string p = info[0].As<Napi::String>();
  uint32_t mode = argId(info, 1, "mode"), major = argId(info, 2, "major"), minor = argId(info, 3, "minor");
  int r = nsMknodChar(p.c_str(), mode, major, minor);
  if (r < 0) throw errnoError(env, r, "mknod", p);
  return env.Undefined();
}

Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "pid must be a number");
  int r = nsPidfdOpen(info[0].As<Napi::Number>().Int32Value());
  if (r < 0) throw errnoError(info.Env(), r, "pidfd_open");
  return Napi::Number::New(info.Env(), r);
}

Napi::Value WaitPid(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "pid must be a number");
  int code = 0;
  int r = nsWaitPid(info[0].As<Napi::Number>().Int32Value(), &code);
  if (r < 0) throw errnoError(info.Env(), r, "waitpid");
  return r == 0 ? info.Env().Null() : Napi::Number::New(info.Env(), code);
}

// A JS callback that native code runs from libuv (watchers, thread-safe calls)
// must never take the process down by throwing: its exception is caught here
// and handed to the reporter JS registered with setCallbackErrorReporter
// (a function (where, error)), else printed to stderr. Never rethrown.
// The reporter belongs to the environment (main thread or worker) that registered it; an
// exception in another environment (an iothread worker) is printed instead.
static Napi::FunctionReference g_callbackErrorReporter;
static napi_env g_callbackErrorReporterEnv = nullptr;

static Napi::Value SetCallbackErrorReporter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info[0].IsFunction()) {
    g_callbackErrorReporter = Napi::Persistent(info[0].As<Napi::Function>());
    g_callbackErrorReporterEnv = env;
  } else if (!g_callbackErrorReporter.IsEmpty() && g_callbackErrorReporterEnv == static_cast<napi_env>(env)) {
    g_callbackErrorReporter.Reset();
    g_callbackErrorReporterEnv = nullptr;
  }
  return env.Undefined();
}

static void reportCallbackError(Napi::Env env, const char* where, const Napi::Error& e) {
  // Nothing here may throw: it runs inside libuv callbacks, also while a worker's
  // environment is being torn down (then every call into JS fails, with an empty error).
  try {
    if (!g_callbackErrorReporter.IsEmpty() && g_callbackErrorReporterEnv == static_cast<napi_env>(env)) {
      try {
        g_callbackErrorReporter.Call({Napi::String::New(env, where), e.Value()});
        return;
      } catch (const Napi::Error& inner) {
        fprintf(stderr, "kvm-native: the callback error reporter threw: %s\n", inner.what());
      }
    }
    std::string text = e.what();
    try {
      Napi::Value stack = e.Value().As<Napi::Object>().Get("stack");
      if (stack.IsString()) text = stack.As<Napi::String>().Utf8Value();
    } catch (const Napi::Error&) {
    }
    if (!text.empty()) fprintf(stderr, "kvm-native: exception in %s callback (ignored): %s\n", where, text.c_str());
  } catch (...) {
  }
}

// FdWatcher: calls back on the JS thread whenever the fd is readable (uv_poll).
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {InstanceMethod("start", &FdWatcher::Start), InstanceMethod("stop", &FdWatcher::Stop),
                        InstanceMethod("close", &FdWatcher::Close), InstanceMethod("setRef", &FdWatcher::SetRef)});
  }

  FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    fd_ = argFd(info, 0);
    if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop;
    napi_get_uv_event_loop(env, &loop);
    handle_ = static_cast<uv_poll_t*>(std::malloc(sizeof(uv_poll_t)));
    if (!handle_) throw Napi::Error::New(env, "out of memory");
    int r = uv_poll_init(loop, handle_, fd_);
    if (r != 0) {
      std::free(handle_);
      handle_ = nullptr;
      throw errnoError(env, r, "uv_poll_init");
    }
    handle_->data = this;
  }

  // In the destructor the object is being finalized (also when a worker's environment is torn
  // down with the watcher still active): no Unref() then, which would throw and abort.
  ~FdWatcher() override {
    active_ = false;
    closeHandle();
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (!handle_) throw Napi::Error::New(info.Env(), "watcher is closed");
    if (!active_) {
      int r = uv_poll_start(handle_, UV_READABLE, OnPoll);
      if (r != 0) throw errnoError(info.Env(), r, "uv_poll_start");
      active_ = true;
      Ref();  // alive while watching
    }
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    stopPolling();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    closeHandle();
    return info.Env().Undefined();
  }

  // setRef(false): a watching handle no longer keeps the event loop alive (uv_unref); setRef(true) undoes it.
  Napi::Value SetRef(const Napi::CallbackInfo& info) {
    if (handle_) {
      if (info[0].ToBoolean().Value()) uv_ref(reinterpret_cast<uv_handle_t*>(handle_));
      else uv_unref(reinterpret_cast<uv_handle_t*>(handle_));
    }
    return info.Env().Undefined();
  }

  void stopPolling() {
    if (handle_ && active_) {
      uv_poll_stop(handle_);
      active_ = false;
      Unref();
    }
  }

  void closeHandle() {
    stopPolling();
    if (handle_) {
      uv_poll_stop(handle_);
      handle_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(handle_), freeClosedHandle);
      handle_ = nullptr;
    }
  }

  static void OnPoll(uv_poll_t* h, int status, int) {
    auto* self = static_cast<FdWatcher*>(h->data);
    if (!self || !self->active_) return;
    Napi::Env env = self->Env();
    // MakeCallback runs microtasks. An exception from the callback is reported, never rethrown: a
    // C++ exception escaping a libuv callback would abort the process. The outer catch covers a
    // worker's environment shutting down, where even opening a handle scope can fail.
    try {
      Napi::HandleScope scope(env);
      Napi::Value err = status < 0 ? errnoError(env, status, "uv_poll").Value() : env.Null();
      try {
        self->cb_.MakeCallback(env.Global(), {err});
      } catch (const Napi::Error& e) {
        reportCallbackError(env, "fd watcher", e);
      }
    } catch (...) {
    }
  }

  int fd_;
  uv_poll_t* handle_ = nullptr;
  bool active_ = false;
  Napi::FunctionReference cb_;
};

// VcpuThread: a VcpuLoop whose exits are completed by a JS function.
// new VcpuThread(vcpuFd, runBuffer, onExit(reason) => action, onState(state, errno))
//
// Exits go through an ExitMailbox (vcpu.h) and a uv_async handle: the vCPU
// thread posts the exit and wakes the event loop; the async callback calls
// onExit and answers. State changes (paused, running, stopped, error) are rare
// and go through a thread-safe function, which also keeps the loop alive while
// the thread runs and joins it at the end.
class VcpuThread : public Napi::ObjectWrap<VcpuThread> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "VcpuThread",
                       {InstanceMethod("start", &VcpuThread::Start), InstanceMethod("pause", &VcpuThread::Pause),
                        InstanceMethod("resume", &VcpuThread::Resume), InstanceMethod("stop", &VcpuThread::Stop),
                        InstanceMethod("tid", &VcpuThread::Tid)});
  }

  VcpuThread(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuThread>(info), mailbox_(&VcpuThread::WakeLoop, this) {
    Napi::Env env = info.Env();
    fd_ = argFd(info, 0);
    if (!info[1].IsArrayBuffer()) throw Napi::TypeError::New(env, "run must be the vCPU's kvm_run ArrayBuffer");
    auto run = info[1].As<Napi::ArrayBuffer>();
    if (run.ByteLength() < sizeof(kvm_run)) throw Napi::RangeError::New(env, "run buffer is smaller than kvm_run");
    if (!info[2].IsFunction() || !info[3].IsFunction())
      throw Napi::TypeError::New(env, "onExit and onState must be functions");
    runRef_ = Napi::Persistent(run.As<Napi::Object>());
    run_ = static_cast<kvm_run*>(run.Data());
    onExit_ = Napi::Persistent(info[2].As<Napi::Function>());
    onState_ = Napi::Persistent(info[3].As<Napi::Function>());
  }

  ~VcpuThread() override {
    if (cleanupHook_) napi_remove_env_cleanup_hook(env_, &VcpuThread::OnEnvCleanup, this);
    shutDown();
  }

 private:
  // How long each side spins before sleeping, when both threads can run at
  // once (see ExitMailbox). The vCPU side covers a JS exit handler and the JS
  // side a guest's next exit (~12 µs of KVM round trip on this host); the
  // event loop waits at most kMaxBatchNs for a vCPU exiting in a tight loop.
  static constexpr int64_t kVcpuSpinNs = 50000;
  static constexpr int64_t kJsSpinNs = 30000;
  static constexpr int64_t kMaxBatchNs = 2000000;
  static constexpr size_t kRunMapSize = 4096;  // struct kvm_run (the PIO data page after it is JS's)

  struct StateMessage {
    const char* state;
    int err;
  };

  static void WakeLoop(void* arg) {
    auto* self = static_cast<VcpuThread*>(arg);
    uv_async_send(self->async_);  // async-signal and thread safe; coalesces
  }

  // The async callback: completes this vCPU's pending exit, then (when
  // spinning pays) the ones that follow within the poll window.
  static void OnAsync(uv_async_t* h) {
    auto* self = static_cast<VcpuThread*>(h->data);
    if (!self || !self->mailbox_.pending()) return;
    Napi::Env env = self->Env();
    try {
      Napi::HandleScope scope(env);
      const uint64_t t0 = uv_hrtime();
      do {
        self->completeExit(env);
      } while (uv_hrtime() - t0 < static_cast<uint64_t>(kMaxBatchNs) && self->mailbox_.poll());
    } catch (...) {
      // A worker's environment shutting down: nothing can be called any more (the mailbox is closed by the cleanup hook).
    }
  }

  void completeExit(Napi::Env env) {
    int action = VcpuLoop::kStop;
    Napi::HandleScope scope(env);
    try {
      // MakeCallback: microtasks and process.nextTick run after each exit, as for any libuv callback.
      Napi::Value r = onExit_.MakeCallback(env.Global(), {Napi::Number::New(env, mailbox_.reason())});
      if (r.IsNumber()) action = r.As<Napi::Number>().Int32Value();
    } catch (const Napi::Error& e) {
      // A JS exit handler must not throw; if it does the vCPU stops and the error is reported.
      action = VcpuLoop::kStop;
      try {
        onState_.Call({Napi::String::New(env, "error"), Napi::Number::New(env, 0), e.Value()});
      } catch (const Napi::Error& e2) {
        reportCallbackError(env, "vCPU state", e2);
      }
    }
    mailbox_.answer(action);
  }

  static void CallState(Napi::Env env, Napi::Function, VcpuThread* self, StateMessage* msg) {
    std::string state = msg->state;
    int err = msg->err;
    delete msg;
    if (env == nullptr || self == nullptr) return;  // environment going away
    try {
      self->onState_.Call({Napi::String::New(env, state), Napi::Number::New(env, err)});
    } catch (const Napi::Error& e) {
      // Rethrowing from a thread-safe call would make it an uncaught exception (process exit).
      reportCallbackError(env, "vCPU state", e);
    }
  }

  using Tsfn = Napi::TypedThreadSafeFunction<VcpuThread, StateMessage, CallState>;

  // Ends the thread (if any) and releases the async handle. JS thread only.
  // `teardown`: the environment is going away; libuv may run the close callback
  // only after Node has unloaded this addon (a worker that alone loaded it), so
  // none is given and the handle's few bytes are left to the process.
  void shutDown(bool teardown = false) {
    mailbox_.close();
    if (loop_) {
      loop_->stop();
      loop_->join();
    }
    if (threadRun_) {
      sysMunmap(threadRun_, kRunMapSize);
      threadRun_ = nullptr;
    }
    if (async_) {
      async_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(async_), teardown ? nullptr : freeClosedHandle);
      async_ = nullptr;
    }
  }

  // Environment teardown: a vCPU waiting for an answer gets kStop, then the thread is joined (before
  // the thread-safe function's finalizer, whose cleanup hook was added first and so runs later).
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<VcpuThread*>(arg);
    self->cleanupHook_ = false;
    self->shutDown(true);
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (loop_) throw Napi::Error::New(env, "vCPU thread already started");
    // The thread's own mapping of the kvm_run page: valid until the thread is joined, whatever
    // happens to the JS ArrayBuffer (an environment being torn down frees it in any order).
    void* threadRun = nullptr;
    if (int r = sysMmapFd(fd_, kRunMapSize, 0, &threadRun); r < 0) throw errnoError(env, r, "mmap", "kvm_run");
    threadRun_ = static_cast<kvm_run*>(threadRun);
    uv_loop_t* uvLoop = nullptr;
    if (napi_get_uv_event_loop(env, &uvLoop) != napi_ok || !uvLoop) throw Napi::Error::New(env, "no event loop");
    async_ = static_cast<uv_async_t*>(std::malloc(sizeof(uv_async_t)));
    if (!async_) throw Napi::Error::New(env, "out of memory");
    if (int r = uv_async_init(uvLoop, async_, &VcpuThread::OnAsync); r != 0) {
      std::free(async_);
      async_ = nullptr;
      throw errnoError(env, r, "uv_async_init");
    }
    async_->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(async_));  // the thread-safe function keeps the loop alive
    if (moreThanOneCpuAllowed()) mailbox_.setSpin(kVcpuSpinNs, kJsSpinNs);
    tsfn_ = Tsfn::New(env, "vcpu", 0, 1, this, [](Napi::Env, void*, VcpuThread* self) {
      self->shutDown();
      // At process exit the environment is being torn down and the reference may be gone
      // already: Unref() then throws, and an exception out of a finalizer aborts the process.
      try {
        self->Unref();
      } catch (...) {
      }
    });
    env_ = env;
    if (napi_add_env_cleanup_hook(env, &VcpuThread::OnEnvCleanup, this) == napi_ok) cleanupHook_ = true;
    Ref();
    loop_ = std::make_unique<VcpuLoop>(
        fd_, threadRun_,
        [this](uint32_t reason) { return mailbox_.exchange(reason, VcpuLoop::kStop); },
        [this](const char* state, int err) {
          // Runs on the vCPU thread: nothing may escape it (std::terminate). At exit the
          // JS environment may already be gone; the state is then simply not reported.
          auto* msg = new StateMessage{state, err};
          try {
            if (tsfn_.BlockingCall(msg) != napi_ok) delete msg;
          } catch (...) {
            fprintf(stderr, "kvm-native: vCPU state '%s' could not be reported\n", state);
          }
          try {
            if (strcmp(state, "stopped") == 0) tsfn_.Release();
          } catch (...) {
          }
        });
    loop_->start();
    return env.Undefined();
  }

  // pause(gen) / resume(gen): the generation the thread reports back with "paused" / "running".
  Napi::Value Pause(const Napi::CallbackInfo& info) {
    if (loop_) loop_->pause(info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0);
    return info.Env().Undefined();
  }
  Napi::Value Resume(const Napi::CallbackInfo& info) {
    if (loop_) loop_->resume(info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0);
    return info.Env().Undefined();
  }
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (loop_) loop_->stop();
    return info.Env().Undefined();
  }
  // tid(): the vCPU thread's kernel thread id, 0 before it runs.
  Napi::Value Tid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), loop_ ? loop_->tid() : 0); }

  int fd_;
  kvm_run* run_;
  Napi::ObjectReference runRef_;
  Napi::FunctionReference onExit_;
  Napi::FunctionReference onState_;
  Tsfn tsfn_;
  ExitMailbox mailbox_;
  uv_async_t* async_ = nullptr;
  kvm_run* threadRun_ = nullptr;
  napi_env env_ = nullptr;
  bool cleanupHook_ = false;
  std::unique_ptr<VcpuLoop> loop_;
};

// seccompSetTrapReporter(prefix, suffix, names, argsPrefix?): SIGSYS reporter for SECCOMP_RET_TRAP (seccomp.h).
Napi::Value SeccompSetTrapReporter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsArray())
    throw Napi::TypeError::New(env, "seccompSetTrapReporter(prefix: string, suffix: string, names: string[])");
  Napi::Array a = info[2].As<Napi::Array>();
  std::vector<std::string> names;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value v = a.Get(i);
    names.push_back(v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string());
  }
  std::string argsPrefix = info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : std::string();
  int r = sysSeccompSetTrapReporter(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value(), names, argsPrefix);
  if (r < 0) throw errnoError(env, r, "sigaction");
  return env.Undefined();
}

// seccompInstall(program): no_new_privs + a seccomp-BPF filter on every thread (TSYNC).
// `program`: struct sock_filter entries, 8 bytes each, in host byte order.
Napi::Value SeccompInstall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "seccompInstall(program: Uint8Array)");
  Napi::TypedArray t = info[0].As<Napi::TypedArray>();
  size_t bytes = t.ByteLength();
  if (bytes == 0 || bytes % 8 != 0) throw Napi::RangeError::New(env, "a BPF program is a non-empty multiple of 8 bytes");
  const uint8_t* src = static_cast<const uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
  std::vector<uint64_t> insns(bytes / 8);  // aligned copy
  memcpy(insns.data(), src, bytes);
  long r = sysSeccompInstall(insns.data(), insns.size());
  if (r < 0) throw errnoError(env, static_cast<int>(r), "seccomp");
  if (r > 0) throw Napi::Error::New(env, "seccomp: thread " + std::to_string(r) + " could not be synchronized (TSYNC)");
  return env.Undefined();
}

// IoUring: new IoUring(entries, eventfd); a Uring (uring.h) owned by JS.
//   prep(op, fd, offset, bufs: Uint8Array[] | null, len, mode, tag) -> 0 | -errno (-EBUSY: ring full)
//   submit() -> count | -errno; reap(tags: Float64Array, results: Int32Array) -> count
//   cancelAndWait(); registerFile(fd) -> slot | -1; unregisterFile(fd); close()
// The buffers must stay alive until their completion is reaped (the JS side keeps them).
class IoUring : public Napi::ObjectWrap<IoUring> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "IoUring",
                       {InstanceMethod("prep", &IoUring::Prep), InstanceMethod("submit", &IoUring::Submit),
                        InstanceMethod("reap", &IoUring::Reap), InstanceMethod("cancelAndWait", &IoUring::CancelAndWait),
                        InstanceMethod("registerFile", &IoUring::RegisterFile),
                        InstanceMethod("unregisterFile", &IoUring::UnregisterFile), InstanceMethod("close", &IoUring::Close),
                        InstanceAccessor("sqEntries", &IoUring::SqEntries, nullptr),
                        InstanceAccessor("cqEntries", &IoUring::CqEntries, nullptr),
                        InstanceAccessor("inFlight", &IoUring::InFlight, nullptr)});
  }

  IoUring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IoUring>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "entries must be a number");
    int64_t entries = info[0].As<Napi::Number>().Int64Value();
    if (entries < 1 || entries > 32768) throw Napi::RangeError::New(env, "entries must be in [1, 32768]");
    int efd = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : -1;
    Uring* u = nullptr;
    int r = Uring::create(static_cast<unsigned>(entries), efd, &u);
    if (r < 0) throw errnoError(env, r, "io_uring_setup");
    ring_.reset(u);
  }

 private:
  Uring& ring(Napi::Env env) {
    if (!ring_) throw Napi::Error::New(env, "io_uring is closed");
    return *ring_;
  }

  Napi::Value Prep(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Uring& u = ring(env);
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "op must be a number");
    int op = info[0].As<Napi::Number>().Int32Value();
    int fd = argFd(info, 1);
    uint64_t off = argU64(info, 2, "offset");
    std::vector<struct iovec> iov;
    if (info[3].IsArray()) {
      auto arr = info[3].As<Napi::Array>();
      uint32_t n = arr.Length();
      if (n == 0 || n > 1024) throw Napi::RangeError::New(env, "bufs must hold 1 to 1024 buffers");
      iov.reserve(n);
      for (uint32_t i = 0; i < n; i++) {
        Napi::Value v = arr.Get(i);
        if (!v.IsTypedArray()) throw Napi::TypeError::New(env, "bufs must be Uint8Arrays");
        auto ta = v.As<Napi::TypedArray>();
        // SAFETY: the JS side holds the views until the completion is reaped, and
        // ArrayBuffer() moves a small on-heap array's bytes off the heap for good.
        void* p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
        iov.push_back({p, ta.ByteLength()});
      }
    }
    uint64_t len = argU64(info, 4, "len");
    if (!info[5].IsNumber() || !info[6].IsNumber()) throw Napi::TypeError::New(env, "mode and tag must be numbers");
    int mode = info[5].As<Napi::Number>().Int32Value();
    uint64_t tag = static_cast<uint64_t>(info[6].As<Napi::Number>().Int64Value());
    if ((op == Uring::kReadv || op == Uring::kWritev) && iov.empty()) throw Napi::TypeError::New(env, "readv/writev need bufs");
    int r = u.prep(op, fd, off, iov.data(), static_cast<unsigned>(iov.size()), len, mode, tag);
    // The kernel copies an iovec array when it takes the request (IORING_FEAT_SUBMIT_STABLE):
    // it lives here until then (a moved vector keeps its storage).
    if (r == 0 && !iov.empty()) iovArena_.push_back(std::move(iov));
    return Napi::Number::New(env, r);
  }

  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Uring& u = ring(info.Env());
    int r = u.submit();
    if (u.queued() == 0) iovArena_.clear();
    return Napi::Number::New(info.Env(), r);
  }

  Napi::Value Reap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Uring& u = ring(env);
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw Napi::TypeError::New(env, "tags must be a Float64Array");
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "results must be an Int32Array");
    auto tags = info[0].As<Napi::Float64Array>();
    auto res = info[1].As<Napi::Int32Array>();
    unsigned max = static_cast<unsigned>(std::min(tags.ElementLength(), res.ElementLength()));
    tagBuf_.resize(max);
    unsigned n = u.reap(tagBuf_.data(), res.Data(), max);
    for (unsigned i = 0; i < n; i++) tags[i] = tagBuf_[i] == UINT64_MAX ? -1.0 : static_cast<double>(tagBuf_[i]);
    return Napi::Number::New(env, n);
  }

  Napi::Value CancelAndWait(const Napi::CallbackInfo& info) {
    int r = ring(info.Env()).cancelAndWait();
    if (r < 0) throw errnoError(info.Env(), r, "io_uring_enter");
    return info.Env().Undefined();
  }

  Napi::Value RegisterFile(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), ring(info.Env()).registerFile(argFd(info, 0))); }

  Napi::Value UnregisterFile(const Napi::CallbackInfo& info) {
    ring(info.Env()).unregisterFile(argFd(info, 0));
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (ring_) {
      ring_.reset();
      iovArena_.clear();
    }
    return info.Env().Undefined();
  }

  Napi::Value SqEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), ring_ ? ring_->sqEntries() : 0); }
  Napi::Value CqEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), ring_ ? ring_->cqEntries() : 0); }
  Napi::Value InFlight(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), ring_ ? ring_->inFlight() : 0); }

  // The destructor of a ring with requests in flight waits for them (the kernel must not
  // write into memory that may be gone); JS closes explicitly before that.
  struct Deleter {
    void operator()(Uring* u) const {
      u->cancelAndWait();
      delete u;
    }
  };
  std::unique_ptr<Uring, Deleter> ring_;
  std::vector<std::vector<struct iovec>> iovArena_;  // iovecs of requests queued, not yet submitted
  std::vector<uint64_t> tagBuf_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open));
  exports.Set("setCallbackErrorReporter", Napi::Function::New(env, SetCallbackErrorReporter));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf));
  exports.Set("memfdMap", Napi::Function::New(env, MemfdMap));
  exports.Set("mmapFd", Napi::Function::New(env, MmapFd));
  exports.Set("dataExtents", Napi::Function::New(env, DataExtents));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
  exports.Set("gettid", Napi::Function::New(env, Gettid));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept));
  exports.Set("sendFds", Napi::Function::New(env, SendFds));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds));
  exports.Set("pollIn", Napi::Function::New(env, PollIn));
  exports.Set("dup", Napi::Function::New(env, Dup));
  exports.Set("writevFrames", Napi::Function::New(env, WritevFrames));
  exports.Set("readvFrames", Napi::Function::New(env, ReadvFrames));
  exports.Set("atomicOr64", Napi::Function::New(env, AtomicOr64));
  exports.Set("atomicFetchClear64", Napi::Function::New(env, AtomicFetchClear64));
  exports.Set("chroot", Napi::Function::New(env, Chroot));
  exports.Set("setGroups", Napi::Function::New(env, SetGroups));
  exports.Set("setResGid", Napi::Function::New(env, SetResGid));
  exports.Set("setResUid", Napi::Function::New(env, SetResUid));
  exports.Set("dropCapabilityBounding", Napi::Function::New(env, DropCapabilityBounding));
  exports.Set("clearCapabilities", Napi::Function::New(env, ClearCapabilities));
  exports.Set("lookupUser", Napi::Function::New(env, LookupUser));
  exports.Set("nsSpawn", Napi::Function::New(env, NsSpawn));
  exports.Set("mknodChar", Napi::Function::New(env, MknodChar));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("waitPid", Napi::Function::New(env, WaitPid));
  exports.Set("FdWatcher", FdWatcher::Init(env));
  exports.Set("VcpuThread", VcpuThread::Init(env));
  exports.Set("seccompSetTrapReporter", Napi::Function::New(env, SeccompSetTrapReporter));
  exports.Set("seccompInstall", Napi::Function::New(env, SeccompInstall));
  exports.Set("seccompTrapExitStatus", Napi::Number::New(env, kSeccompTrapExitStatus));
  exports.Set("IoUring", IoUring::Init(env));
  exports.Set("kvmRunSize", Napi::Number::New(env, sizeof(kvm_run)));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvm_native, Init)
