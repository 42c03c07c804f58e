// Plain C++ system layer: fds, ioctls, mappings, eventfds. No N-API here.
#pragma once
#include <cstddef>
#include <cstdint>

struct iovec;

namespace kvmnative {

// Every function returns >= 0 on success or -errno on failure.
int sysOpen(const char* path, int flags);
int sysClose(int fd);
// ioctl with an integer argument.
long sysIoctlInt(int fd, unsigned long request, unsigned long arg);
// ioctl with a pointer argument. SAFETY: the caller guarantees `ptr` points at
// `len` writable bytes; `len` is checked against the size the request encodes.
long sysIoctlPtr(int fd, unsigned long request, void* ptr, size_t len);

// memfd_create + ftruncate + mmap(MAP_SHARED). On success *outFd and *outAddr are set.
int sysMemfdMap(const char* name, size_t size, int* outFd, void** outAddr);
// mmap(MAP_SHARED) of an existing fd (used for the kvm_run page of a vCPU).
int sysMmapFd(int fd, size_t size, long offset, void** outAddr);
int sysMunmap(void* addr, size_t size);
// lseek(2) (SEEK_DATA / SEEK_HOLE to find the allocated parts of a memfd); the offset or -errno.
int64_t sysSeek(int fd, int64_t offset, int whence);

int sysEventfd(unsigned initval, int flags);
// Returns 1 and sets *value when a count was read, 0 when the counter was zero (EAGAIN).
int sysEventfdRead(int fd, uint64_t* value);
int sysEventfdWrite(int fd, uint64_t value);

// fallocate(2) (hole punching and zeroing for block backends).
int sysFallocate(int fd, int mode, int64_t offset, int64_t len);

// Unix stream sockets with descriptor passing (SCM_RIGHTS), for vhost-user.
// Listening sockets are non-blocking (accept when polled readable); connected
// sockets are blocking (callers poll first when they must not wait).
int sysUnixListen(const char* path, int backlog);
int sysUnixConnect(const char* path);
// accept4; returns -EAGAIN when no connection is waiting.
int sysUnixAccept(int listenFd);
// sendmsg of all `len` bytes with `nfds` descriptors attached to the first byte.
long sysSendFds(int fd, const void* data, size_t len, const int* fds, int nfds);
// One recvmsg into `buf`: returns the byte count (0 at end of stream); up to
// `maxFds` received descriptors are stored in `fds` and counted in *nfds
// (extra ones are closed). Descriptors arrive close-on-exec.
long sysRecvFds(int fd, void* buf, size_t len, int* fds, int maxFds, int* nfds);
// poll(POLLIN) with a timeout: 1 readable (or hung up), 0 timeout.
int sysPollIn(int fd, int timeoutMs);
int sysDup(int fd);

// readv(2) / writev(2), retried on EINTR: the byte count or -errno.
long sysReadv(int fd, const struct iovec* iov, int niov);
long sysWritev(int fd, const struct iovec* iov, int niov);

// The signal used to kick a vCPU thread out of KVM_RUN (handler is a no-op).
int kickSignal();
void installKickSignalHandler();

}  // namespace kvmnative
