#include "sys.h"

#include <asm/ioctl.h>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <mutex>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace kvmnative {

static inline int err() { return -errno; }

int sysOpen(const char* path, int flags) {
  int fd = open(path, flags | O_CLOEXEC);
  return fd < 0 ? err() : fd;
}

int sysClose(int fd) { return close(fd) < 0 ? err() : 0; }

long sysIoctlInt(int fd, unsigned long request, unsigned long arg) {
  long r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? err() : r;
}

long sysIoctlPtr(int fd, unsigned long request, void* ptr, size_t len) {
  // Requests that encode a size must not make the kernel touch more than the
  // buffer the caller handed us (flexible-array ioctls encode only their header).
  if (_IOC_DIR(request) != _IOC_NONE && _IOC_SIZE(request) > len) return -EINVAL;
  long r;
  do {
    r = ioctl(fd, request, ptr);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? err() : r;
}

int sysMemfdMap(const char* name, size_t size, int* outFd, void** outAddr) {
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return err();
  if (ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int e = err();
    close(fd);
    return e;
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) {
    int e = err();
    close(fd);
    return e;
  }
  *outFd = fd;
  *outAddr = p;
  return 0;
}

int sysMmapFd(int fd, size_t size, long offset, void** outAddr) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) return err();
  *outAddr = p;
  return 0;
}

int sysMunmap(void* addr, size_t size) { return munmap(addr, size) < 0 ? err() : 0; }

int sysEventfd(unsigned initval, int flags) {
  int fd = eventfd(initval, flags);
  return fd < 0 ? err() : fd;
}

int sysEventfdRead(int fd, uint64_t* value) {
  ssize_t n;
  do {
    n = read(fd, value, sizeof(*value));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EAGAIN ? 0 : err();
  return n == sizeof(*value) ? 1 : -EIO;
}

int sysEventfdWrite(int fd, uint64_t value) {
  ssize_t n;
  do {
    n = write(fd, &value, sizeof(value));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return err();
  return n == sizeof(value) ? 0 : -EIO;
}

int sysFallocate(int fd, int mode, int64_t offset, int64_t len) {
  int r;
  do {
    r = fallocate(fd, mode, offset, len);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? err() : 0;
}

int kickSignal() { return SIGRTMIN + 2; }

static void onKick(int) {}

void installKickSignalHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_handler = onKick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(kickSignal(), &sa, nullptr);
  });
}

}  // namespace kvmnative
