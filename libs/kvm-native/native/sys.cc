#include "sys.h"

#include <asm/ioctl.h>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <cstring>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
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

static int fillAddr(const char* path, sockaddr_un* sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa->sun_path) return -ENAMETOOLONG;
  strcpy(sa->sun_path, path);
  return 0;
}

int sysUnixListen(const char* path, int backlog) {
  sockaddr_un sa;
  int r = fillAddr(path, &sa);
  if (r < 0) return r;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return err();
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || listen(fd, backlog) < 0) {
    int e = err();
    close(fd);
    return e;
  }
  return fd;
}

int sysUnixConnect(const char* path) {
  sockaddr_un sa;
  int r = fillAddr(path, &sa);
  if (r < 0) return r;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return err();
  do {
    r = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = err();
    close(fd);
    return e;
  }
  return fd;
}

int sysUnixAccept(int listenFd) {
  int fd;
  do {
    fd = accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd < 0 ? err() : fd;
}

long sysSendFds(int fd, const void* data, size_t len, const int* fds, int nfds) {
  if (nfds < 0 || nfds > 64) return -EINVAL;
  size_t sent = 0;
  while (sent < len || (len == 0 && nfds > 0 && sent == 0)) {
    iovec iov{const_cast<char*>(static_cast<const char*>(data)) + sent, len - sent};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 64)];
    if (sent == 0 && nfds > 0) {
      m.msg_control = ctl;
      m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      // SAFETY: ctl has room for 64 ints and nfds <= 64 was checked above.
      memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return err();
    }
    sent += static_cast<size_t>(r);
    if (len == 0) break;
  }
  return static_cast<long>(sent);
}

long sysRecvFds(int fd, void* buf, size_t len, int* fds, int maxFds, int* nfds) {
  *nfds = 0;
  iovec iov{buf, len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 64)];
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  ssize_t r;
  do {
    r = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return err();
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int n = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int got[64];
    // SAFETY: the kernel wrote n ints after the header; ctl holds at most 64.
    memcpy(got, CMSG_DATA(c), sizeof(int) * (n > 64 ? 64 : n));
    for (int i = 0; i < n && i < 64; i++) {
      if (*nfds < maxFds) fds[(*nfds)++] = got[i];
      else close(got[i]);
    }
  }
  return static_cast<long>(r);
}

int sysPollIn(int fd, int timeoutMs) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, timeoutMs);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return err();
  return r > 0 ? 1 : 0;
}

int sysDup(int fd) {
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return r < 0 ? err() : r;
}

long sysReadv(int fd, const struct iovec* iov, int niov) {
  ssize_t n;
  do {
    n = readv(fd, iov, niov);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? err() : static_cast<long>(n);
}

long sysWritev(int fd, const struct iovec* iov, int niov) {
  ssize_t n;
  do {
    n = writev(fd, iov, niov);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? err() : static_cast<long>(n);
}

int sysMunmap(void* addr, size_t size) { return munmap(addr, size) < 0 ? err() : 0; }

int64_t sysSeek(int fd, int64_t offset, int whence) {
  off_t r = lseek(fd, static_cast<off_t>(offset), whence);
  return r < 0 ? err() : static_cast<int64_t>(r);
}

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
