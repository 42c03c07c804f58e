// A raw io_uring; see uring.h.
#include "uring.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvmnative {

namespace {

constexpr unsigned kFixedFiles = 8;

int ioUringSetup(unsigned entries, io_uring_params* p) { return static_cast<int>(syscall(__NR_io_uring_setup, entries, p)); }
int ioUringEnter(int fd, unsigned toSubmit, unsigned minComplete, unsigned flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, toSubmit, minComplete, flags, nullptr, 0));
}
int ioUringRegister(int fd, unsigned op, void* arg, unsigned n) { return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, n)); }

template <typename T>
T* at(void* base, unsigned off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

inline unsigned loadAcquire(const unsigned* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void storeRelease(unsigned* p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

}  // namespace

int Uring::create(unsigned entries, int eventfd, Uring** out) {
  io_uring_params p;
  memset(&p, 0, sizeof p);
  // CLAMP: a too-large request is cut to the kernel's maximum instead of failing.
  p.flags = IORING_SETUP_CLAMP;
  int fd = ioUringSetup(entries, &p);
  if (fd < 0) return -errno;
  Uring* u = new Uring();
  u->ringFd_ = fd;
  u->sqEntries_ = p.sq_entries;
  u->cqEntries_ = p.cq_entries;
  u->sqRingSize_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  u->cqRingSize_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single && u->cqRingSize_ > u->sqRingSize_) u->sqRingSize_ = u->cqRingSize_;
  void* sq = mmap(nullptr, u->sqRingSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) {
    int e = -errno;
    delete u;
    return e;
  }
  u->sqRing_ = sq;
  if (single) {
    u->cqRing_ = sq;
  } else {
    void* cq = mmap(nullptr, u->cqRingSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) {
      int e = -errno;
      delete u;
      return e;
    }
    u->cqRing_ = cq;
  }
  u->sqesSize_ = p.sq_entries * sizeof(io_uring_sqe);
  void* sqes = mmap(nullptr, u->sqesSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    int e = -errno;
    delete u;
    return e;
  }
  u->sqes_ = sqes;
  u->sqHead_ = at<unsigned>(sq, p.sq_off.head);
  u->sqTail_ = at<unsigned>(sq, p.sq_off.tail);
  u->sqMask_ = *at<unsigned>(sq, p.sq_off.ring_mask);
  u->sqArray_ = at<unsigned>(sq, p.sq_off.array);
  u->cqHead_ = at<unsigned>(u->cqRing_, p.cq_off.head);
  u->cqTail_ = at<unsigned>(u->cqRing_, p.cq_off.tail);
  u->cqMask_ = *at<unsigned>(u->cqRing_, p.cq_off.ring_mask);
  u->cqes_ = at<void>(u->cqRing_, p.cq_off.cqes);
  u->localTail_ = *u->sqTail_;
  if (eventfd >= 0) {
    int efd = eventfd;
    // Every completion signals. Not IORING_REGISTER_EVENTFD_ASYNC: it leaves out
    // completions run as task work in the submitter's context (a read that waited
    // on a pipe or on the page cache), which would then sit in the ring unseen.
    if (ioUringRegister(fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0) {
      int e = -errno;
      delete u;
      return e;
    }
  }
  // A sparse fixed-file table; without it (an old kernel) requests use plain fds.
  std::vector<int> empty(kFixedFiles, -1);
  if (ioUringRegister(fd, IORING_REGISTER_FILES, empty.data(), kFixedFiles) == 0) u->files_ = empty;
  *out = u;
  return 0;
}

Uring::~Uring() {
  if (sqes_) munmap(sqes_, sqesSize_);
  if (cqRing_ && cqRing_ != sqRing_) munmap(cqRing_, cqRingSize_);
  if (sqRing_) munmap(sqRing_, sqRingSize_);
  if (ringFd_ >= 0) close(ringFd_);
}

int Uring::fixedSlot(int fd) const {
  for (size_t i = 0; i < files_.size(); i++)
    if (files_[i] == fd) return static_cast<int>(i);
  return -1;
}

int Uring::registerFile(int fd) {
  int have = fixedSlot(fd);
  if (have >= 0) return have;
  int slot = fixedSlot(-1);
  if (slot < 0) return -1;
  io_uring_files_update up;
  memset(&up, 0, sizeof up);
  int f = fd;
  up.offset = static_cast<unsigned>(slot);
  up.fds = reinterpret_cast<uint64_t>(&f);
  if (ioUringRegister(ringFd_, IORING_REGISTER_FILES_UPDATE, &up, 1) != 1) return -1;
  files_[slot] = fd;
  return slot;
}

void Uring::unregisterFile(int fd) {
  int slot = fixedSlot(fd);
  if (slot < 0) return;
  io_uring_files_update up;
  memset(&up, 0, sizeof up);
  int f = -1;
  up.offset = static_cast<unsigned>(slot);
  up.fds = reinterpret_cast<uint64_t>(&f);
  ioUringRegister(ringFd_, IORING_REGISTER_FILES_UPDATE, &up, 1);
  files_[slot] = -1;
}

int Uring::prep(int op, int fd, uint64_t offset, const struct iovec* iov, unsigned niov, uint64_t len, int mode, uint64_t tag) {
  if (localTail_ - loadAcquire(sqHead_) >= sqEntries_) return -EBUSY;
  unsigned idx = localTail_ & sqMask_;
  auto* sqe = static_cast<io_uring_sqe*>(sqes_) + idx;
  memset(sqe, 0, sizeof *sqe);
  int slot = fixedSlot(fd);
  if (slot >= 0) {
    sqe->fd = slot;
    sqe->flags = IOSQE_FIXED_FILE;
  } else {
    sqe->fd = fd;
  }
  sqe->user_data = tag;
  switch (op) {
    case kReadv:
    case kWritev:
      sqe->opcode = op == kReadv ? IORING_OP_READV : IORING_OP_WRITEV;
      sqe->addr = reinterpret_cast<uint64_t>(iov);
      sqe->len = niov;
      sqe->off = offset;
      // mode 1: straight to the kernel's io-wq threads (a large copy does not hold up the submitter).
      if (mode == 1) sqe->flags |= IOSQE_ASYNC;
      break;
    case kFdatasync:
      sqe->opcode = IORING_OP_FSYNC;
      sqe->fsync_flags = IORING_FSYNC_DATASYNC;
      break;
    case kFallocate:
      // The kernel's layout for fallocate: offset in off, length in addr, mode in len.
      sqe->opcode = IORING_OP_FALLOCATE;
      sqe->off = offset;
      sqe->addr = len;
      sqe->len = static_cast<unsigned>(mode);
      break;
    default:
      return -EINVAL;
  }
  sqArray_[idx] = idx;
  localTail_++;
  queued_++;
  return 0;
}

int Uring::submit() {
  if (!queued_) return 0;
  storeRelease(sqTail_, localTail_);
  int r = ioUringEnter(ringFd_, queued_, 0, 0);
  if (r < 0) return -errno;
  queued_ -= static_cast<unsigned>(r);
  inFlight_ += static_cast<unsigned>(r);
  return r;
}

unsigned Uring::reap(uint64_t* tags, int32_t* results, unsigned max) {
  unsigned head = *cqHead_;
  unsigned tail = loadAcquire(cqTail_);
  unsigned n = 0;
  while (head != tail && n < max) {
    auto* cqe = static_cast<io_uring_cqe*>(cqes_) + (head & cqMask_);
    tags[n] = cqe->user_data;
    results[n] = cqe->res;
    n++;
    head++;
  }
  storeRelease(cqHead_, head);
  inFlight_ -= n < inFlight_ ? n : inFlight_;
  return n;
}

int Uring::cancelAndWait() {
  // Nothing still queued may be submitted later: take it back.
  if (queued_) {
    localTail_ -= queued_;
    queued_ = 0;
  }
  if (!inFlight_) return 0;
  if (localTail_ - loadAcquire(sqHead_) < sqEntries_) {
    unsigned idx = localTail_ & sqMask_;
    auto* sqe = static_cast<io_uring_sqe*>(sqes_) + idx;
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY;
    sqe->user_data = UINT64_MAX;  // reap() hands it back with this tag; callers skip it
    sqArray_[idx] = idx;
    localTail_++;
    storeRelease(sqTail_, localTail_);
    if (ioUringEnter(ringFd_, 1, 0, 0) == 1) inFlight_++;
  }
  // Wait until every completion is posted (the cancel's own, if it failed, counts too).
  for (;;) {
    unsigned ready = loadAcquire(cqTail_) - *cqHead_;
    if (ready >= inFlight_) return 0;
    int r = ioUringEnter(ringFd_, 0, inFlight_ - ready, IORING_ENTER_GETEVENTS);
    if (r < 0 && errno != EINTR && errno != EAGAIN) return -errno;
  }
}

}  // namespace kvmnative
