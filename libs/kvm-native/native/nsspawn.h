// Starting a process in new namespaces under a new root (generic plumbing for
// a jailer: the caller decides the namespaces, mounts, ids and program).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kvmnative {

struct NsMount {
  // kind 0: bind mount `source` on `target` (a directory bind is recursive);
  // kind 1: a new proc filesystem on `target` (source unused).
  int kind;
  std::string source;
  std::string target;
  bool readOnly;
};

struct NsSpawnSpec {
  // CLONE_NEW* flags (CLONE_NEWNS is required: the mounts and pivot_root need their own namespace).
  int cloneFlags;
  // A network namespace to join (setns), or -1.
  int netnsFd;
  // With CLONE_NEWUTS: the host name in the new namespace (empty: unchanged).
  std::string hostname;
  // The directory that becomes "/" (pivot_root); the mounts' targets are host paths under it.
  std::string root;
  std::vector<NsMount> mounts;
  uint32_t uid, gid;
  std::vector<uint32_t> groups;
  // The program (a path inside the new root), argv and environment.
  std::string file;
  std::vector<std::string> argv, env;
  // Descriptors the program inherits besides 0, 1 and 2 (their FD_CLOEXEC is cleared).
  std::vector<int> keepFds;
  // prctl(PR_SET_PDEATHSIG) once the ids are changed (0: none).
  int parentDeathSignal;
  // With CLONE_NEWPID: the child stays as a minimal init (PID 1) and runs the
  // program as its own child: it forwards SIGTERM and SIGHUP to it (a terminal's
  // SIGINT and SIGQUIT reach the program directly, its process group being the
  // terminal's), reaps, and exits with its status (128 + N when signal N killed it).
  // The namespace's PID 1 ignores fatal signals it has no handler for, so a
  // program that crashes as PID 1 (SIGSEGV, abort) would fault forever.
  bool init;
};

// The steps a child reports when one fails (NsSpawnFailure.step).
enum NsStep : int32_t {
  kNsWait = 0,  // the parent went away before releasing the child
  kNsSetnsNet,
  kNsHostname,
  kNsMountPrivate,
  kNsBindRoot,
  kNsMount,  // index: the mount
  kNsRemountReadOnly,
  kNsPivotRoot,
  kNsUmountOld,
  kNsBounding,
  kNsSetGroups,
  kNsSetResGid,
  kNsSetResUid,
  kNsNoNewPrivs,
  kNsParentDeathSignal,
  kNsCloseFds,
  kNsExec,
  kNsFork,
};

// What the child writes on its status pipe when a step fails (nothing when execve succeeds: the pipe is O_CLOEXEC).
struct NsSpawnFailure {
  int32_t step;
  int32_t err;
  int32_t index;
};

struct NsSpawnResult {
  int pid;
  // Write one byte to let the child go on (after, e.g., placing it in cgroups); close it to abort it.
  int releaseFd;
  // Read to EOF: nothing when the program was executed, else one NsSpawnFailure.
  int statusFd;
};

// clone(2)s a child into new namespaces. The child waits for the release
// byte, then: joins netnsFd; sets the host name; makes every mount private;
// bind-mounts root on itself and performs `mounts`; pivot_root into root and
// detaches the old root; empties the capability bounding set and ambient set;
// setgroups, setresgid, setresuid (raw syscalls: this thread only, which is the
// whole child); PR_SET_NO_NEW_PRIVS; the parent-death signal; closes every
// other descriptor; (with `init`, forks: see there); execve. Only system
// calls run in the child (no allocation: everything is prepared before clone).
// Returns 0 and fills `out`, or -errno.
int nsSpawn(const NsSpawnSpec& spec, NsSpawnResult* out);

// mknod(path, S_IFCHR | mode, makedev(major, minor)).
int nsMknodChar(const char* path, uint32_t mode, uint32_t major, uint32_t minor);
// pidfd_open(pid, 0): a descriptor that becomes readable when the process ends.
int nsPidfdOpen(int pid);
// waitpid(pid, WNOHANG): 0 while it runs; 1 when it ended (*code: exit status, or -signal); -errno.
int nsWaitPid(int pid, int* code);

}  // namespace kvmnative
