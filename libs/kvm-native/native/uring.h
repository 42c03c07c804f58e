// A raw io_uring (no liburing): the system calls and the shared rings of
// <linux/io_uring.h>. Generic plumbing only: vectored reads and writes,
// fdatasync and fallocate on host fds; completions are reaped in batches and
// signalled through an eventfd. No N-API here.
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvmnative {

class Uring {
 public:
  // Sets up a ring of `entries` submission slots (a power of two, clamped by
  // the kernel). `eventfd` >= 0 is signalled for every completion
  // (IORING_REGISTER_EVENTFD). Returns
  // 0 and sets *out, or -errno (ENOSYS / EPERM where the kernel forbids io_uring).
  static int create(unsigned entries, int eventfd, Uring** out);
  ~Uring();

  enum Op { kReadv = 0, kWritev = 1, kFdatasync = 2, kFallocate = 3 };
  // Queues one request (not yet submitted). For readv/writev, `iov`/`niov`
  // describe the buffers (the kernel copies the iovec array at submit, so it
  // need only live until submit() returns; the buffers until the completion).
  // For fallocate, `len` and `mode`; for readv/writev, mode 1 sets IOSQE_ASYNC
  // (run on io-wq, not inline in submit). -EBUSY when the submission ring is full
  // (submit() first), -EINVAL for an unknown op.
  int prep(int op, int fd, uint64_t offset, const struct iovec* iov, unsigned niov, uint64_t len, int mode, uint64_t tag);
  // Hands every queued request to the kernel: the count taken, or -errno
  // (EAGAIN / EBUSY / EINTR: try again later; the requests stay queued).
  int submit();
  // Copies up to `max` completions out (tag, result: bytes or -errno) and
  // frees their slots; returns how many.
  unsigned reap(uint64_t* tags, int32_t* results, unsigned max);
  // Asks the kernel to cancel every request in flight and waits until all
  // of them completed (cancelled or not): afterwards the kernel touches no
  // buffer it was given. The completions stay in the ring for reap().
  int cancelAndWait();
  // A fixed-file slot for `fd` (IORING_REGISTER_FILES_UPDATE), or -1.
  int registerFile(int fd);
  void unregisterFile(int fd);

  unsigned inFlight() const { return inFlight_; }
  unsigned queued() const { return queued_; }
  unsigned sqEntries() const { return sqEntries_; }
  unsigned cqEntries() const { return cqEntries_; }

 private:
  Uring() = default;
  int fixedSlot(int fd) const;

  int ringFd_ = -1;
  void* sqRing_ = nullptr;
  size_t sqRingSize_ = 0;
  void* cqRing_ = nullptr;  // the same mapping as sqRing_ with IORING_FEAT_SINGLE_MMAP
  size_t cqRingSize_ = 0;
  void* sqes_ = nullptr;
  size_t sqesSize_ = 0;

  unsigned* sqHead_ = nullptr;
  unsigned* sqTail_ = nullptr;
  unsigned sqMask_ = 0;
  unsigned* sqArray_ = nullptr;
  unsigned* cqHead_ = nullptr;
  unsigned* cqTail_ = nullptr;
  unsigned cqMask_ = 0;
  void* cqes_ = nullptr;

  unsigned sqEntries_ = 0;
  unsigned cqEntries_ = 0;
  unsigned localTail_ = 0;  // our submission tail (published on submit)
  unsigned queued_ = 0;     // prepared, not yet taken by the kernel
  unsigned inFlight_ = 0;   // taken by the kernel, completion not reaped
  std::vector<int> files_;  // fixed-file table (fd per slot, -1 free)
};

}  // namespace kvmnative
