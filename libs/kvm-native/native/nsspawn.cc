#include "nsspawn.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

namespace kvmnative {

namespace {

// Everything the child needs, as plain pointers into memory prepared before clone.
struct ChildArgs {
  const NsSpawnSpec* spec;
  int releaseFd;  // read end
  int statusFd;   // write end
  int parentEnds[2];  // the parent's ends of both pipes: closed first, so the parent's going away reads as EOF
  std::vector<const char*> argv, env;
  std::vector<gid_t> groups;
  std::vector<int> keep;  // sorted, with 0, 1, 2 and statusFd
  int lastCap;
};

[[noreturn]] void fail(const ChildArgs* a, int32_t step, int32_t index = 0) {
  NsSpawnFailure f{step, errno, index};
  signal(SIGPIPE, SIG_IGN);  // the parent may have closed its end (abort): exit 127 all the same
  ssize_t r = write(a->statusFd, &f, sizeof f);
  (void)r;
  _exit(127);
}

// Closes every descriptor not in a->keep (sorted); close_range where the kernel has it.
int closeOthers(const ChildArgs* a) {
  unsigned from = 0;
  for (int k : a->keep) {
    unsigned kk = static_cast<unsigned>(k);
    if (kk > from && syscall(SYS_close_range, from, kk - 1, 0) < 0) {
      if (errno != ENOSYS) return -1;
      for (unsigned fd = from; fd < kk; fd++) close(static_cast<int>(fd));
    }
    from = kk + 1;
  }
  if (syscall(SYS_close_range, from, ~0U, 0) < 0) {
    if (errno != ENOSYS) return -1;
    for (unsigned fd = from; fd < 65536; fd++) close(static_cast<int>(fd));
  }
  return 0;
}

volatile pid_t g_initChild = 0;

void forwardToChild(int sig) {
  if (g_initChild > 0) syscall(SYS_kill, g_initChild, sig);
}

// PID 1 of the new namespace: forks the program, forwards signals, reaps, exits with its status.
[[noreturn]] void runAsInit(const ChildArgs* a) {
  const NsSpawnSpec& s = *a->spec;
  // Raw clone: glibc's fork would run the parent process's atfork handlers.
  long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid < 0) fail(a, kNsFork);
  if (pid == 0) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) fail(a, kNsParentDeathSignal);
    execve(s.file.c_str(), const_cast<char* const*>(a->argv.data()), const_cast<char* const*>(a->env.data()));
    fail(a, kNsExec);
  }
  g_initChild = static_cast<pid_t>(pid);
  close(a->statusFd);  // the parent reads EOF once the program executed (its copy is O_CLOEXEC)
  // Not SIGINT or SIGQUIT: a terminal sends those to the whole foreground process group, the program included.
  for (int sig : {SIGTERM, SIGHUP}) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forwardToChild;
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, nullptr);
  }
  for (;;) {
    int st = 0;
    pid_t r = waitpid(-1, &st, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) _exit(127);
    if (r == pid) _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  }
}

int childMain(void* p) {
  const ChildArgs* a = static_cast<const ChildArgs*>(p);
  const NsSpawnSpec& s = *a->spec;
  // Dispositions back to default (Node's handlers must not run here), then the parent's blocked mask is lifted.
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(sig, &sa, nullptr);  // EINVAL for glibc's reserved signals: nothing to reset
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  close(a->parentEnds[0]);
  close(a->parentEnds[1]);
  char go = 0;
  ssize_t n;
  do n = read(a->releaseFd, &go, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) {
    if (n == 0) errno = ECANCELED;
    fail(a, kNsWait);
  }
  close(a->releaseFd);

  if (s.netnsFd >= 0 && setns(s.netnsFd, CLONE_NEWNET) < 0) fail(a, kNsSetnsNet);
  if ((s.cloneFlags & CLONE_NEWUTS) && !s.hostname.empty() && sethostname(s.hostname.data(), s.hostname.size()) < 0)
    fail(a, kNsHostname);
  // Nothing mounted below may propagate back to the host's namespace.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) fail(a, kNsMountPrivate);
  // pivot_root needs the new root to be a mount point.
  if (mount(s.root.c_str(), s.root.c_str(), nullptr, MS_BIND, nullptr) < 0) fail(a, kNsBindRoot);
  for (size_t i = 0; i < s.mounts.size(); i++) {
    const NsMount& m = s.mounts[i];
    const unsigned long safe = MS_NOSUID | MS_NODEV;
    if (m.kind == 1) {
      if (mount("proc", m.target.c_str(), "proc", safe | MS_NOEXEC, nullptr) < 0) fail(a, kNsMount, static_cast<int32_t>(i));
      continue;
    }
    if (mount(m.source.c_str(), m.target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0) fail(a, kNsMount, static_cast<int32_t>(i));
    // A bind mount takes MS_RDONLY (and the other flags) only on a remount.
    if (m.readOnly && mount(nullptr, m.target.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | safe, nullptr) < 0)
      fail(a, kNsRemountReadOnly, static_cast<int32_t>(i));
  }
  // pivot_root(".", "."): the old root ends up on top of the new one, and is detached at once.
  if (chdir(s.root.c_str()) < 0 || syscall(SYS_pivot_root, ".", ".") < 0) fail(a, kNsPivotRoot);
  if (umount2(".", MNT_DETACH) < 0 || chdir("/") < 0) fail(a, kNsUmountOld);

  for (int cap = 0; cap <= a->lastCap; cap++)
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) fail(a, kNsBounding);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) fail(a, kNsBounding);
  // Raw system calls: glibc's wrappers would signal the parent's other threads, which do not exist here.
  if (syscall(SYS_setgroups, a->groups.size(), a->groups.data()) < 0) fail(a, kNsSetGroups);
  if (syscall(SYS_setresgid, s.gid, s.gid, s.gid) < 0) fail(a, kNsSetResGid);
  // From uid 0 to another uid: the permitted and effective capabilities are emptied.
  if (syscall(SYS_setresuid, s.uid, s.uid, s.uid) < 0) fail(a, kNsSetResUid);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail(a, kNsNoNewPrivs);
  // After the id change, which clears it.
  if (s.parentDeathSignal > 0 && prctl(PR_SET_PDEATHSIG, s.parentDeathSignal, 0, 0, 0) < 0) fail(a, kNsParentDeathSignal);

  // Node opens (and marks) even 0, 1 and 2 close-on-exec; a closed standard descriptor stays closed.
  for (int fd : {0, 1, 2}) {
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0) fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
  }
  for (int fd : s.keepFds) {
    int fl = fcntl(fd, F_GETFD);
    if (fl < 0 || fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC) < 0) fail(a, kNsCloseFds, fd);
  }
  if (closeOthers(a) < 0) fail(a, kNsCloseFds);
  if (s.init) runAsInit(a);
  execve(s.file.c_str(), const_cast<char* const*>(a->argv.data()), const_cast<char* const*>(a->env.data()));
  fail(a, kNsExec);
}

int lastCapability() {
  int last = CAP_LAST_CAP;
  int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[16] = {};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n > 0) {
      int v = atoi(buf);
      if (v >= 0 && v < 64) last = v;
    }
    close(fd);
  }
  return last;
}

}  // namespace

int nsSpawn(const NsSpawnSpec& spec, NsSpawnResult* out) {
  if (!(spec.cloneFlags & CLONE_NEWNS)) return -EINVAL;
  ChildArgs a;
  a.spec = &spec;
  for (const auto& s : spec.argv) a.argv.push_back(s.c_str());
  a.argv.push_back(nullptr);
  for (const auto& s : spec.env) a.env.push_back(s.c_str());
  a.env.push_back(nullptr);
  a.groups.assign(spec.groups.begin(), spec.groups.end());
  a.lastCap = lastCapability();

  int release[2], status[2];
  if (pipe2(release, O_CLOEXEC) < 0) return -errno;
  if (pipe2(status, O_CLOEXEC) < 0) {
    int e = errno;
    close(release[0]);
    close(release[1]);
    return -e;
  }
  a.releaseFd = release[0];
  a.statusFd = status[1];
  a.parentEnds[0] = release[1];
  a.parentEnds[1] = status[0];
  a.keep = {0, 1, 2, status[1]};
  for (int fd : spec.keepFds) a.keep.push_back(fd);
  std::sort(a.keep.begin(), a.keep.end());
  a.keep.erase(std::unique(a.keep.begin(), a.keep.end()), a.keep.end());

  const size_t stackSize = 256 * 1024;
  void* stack = mmap(nullptr, stackSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    int e = errno;
    for (int fd : {release[0], release[1], status[0], status[1]}) close(fd);
    return -e;
  }
  // No signal handler of the parent's may run in the child before it resets them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  // Without CLONE_VM the child has its own copy of memory: `a` and the stack stay valid there.
  int pid = clone(childMain, static_cast<char*>(stack) + stackSize, spec.cloneFlags | SIGCHLD, &a);
  int e = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  munmap(stack, stackSize);
  close(release[0]);
  close(status[1]);
  if (pid < 0) {
    close(release[1]);
    close(status[0]);
    return -e;
  }
  out->pid = pid;
  out->releaseFd = release[1];
  out->statusFd = status[0];
  return 0;
}

int nsMknodChar(const char* path, uint32_t mode, uint32_t major, uint32_t minor) {
  return mknod(path, S_IFCHR | (mode & 07777), makedev(major, minor)) < 0 ? -errno : 0;
}

int nsPidfdOpen(int pid) {
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return -errno;
  fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  return static_cast<int>(fd);
}

int nsWaitPid(int pid, int* code) {
  int st = 0;
  int r;
  do r = waitpid(pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  if (r == 0) return 0;
  *code = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
  return 1;
}

}  // namespace kvmnative
