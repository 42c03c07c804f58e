#include "privileges.h"

#include <cerrno>
#include <cstdio>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace kvmnative {

static inline int err() { return -errno; }

int privChroot(const char* dir) {
  if (chroot(dir) < 0) return err();
  return chdir("/") < 0 ? err() : 0;
}

int privSetGroups(const std::vector<uint32_t>& gids) {
  std::vector<gid_t> g(gids.begin(), gids.end());
  return setgroups(g.size(), g.data()) < 0 ? err() : 0;
}

int privSetResGid(uint32_t r, uint32_t e, uint32_t s) { return setresgid(r, e, s) < 0 ? err() : 0; }
int privSetResUid(uint32_t r, uint32_t e, uint32_t s) { return setresuid(r, e, s) < 0 ? err() : 0; }

static int lastCap() {
  int last = CAP_LAST_CAP;
  if (FILE* f = fopen("/proc/sys/kernel/cap_last_cap", "re")) {
    int v;
    if (fscanf(f, "%d", &v) == 1 && v >= 0 && v < 64) last = v;
    fclose(f);
  }
  return last;
}

int privDropBoundingAndAmbient() {
  for (int cap = 0; cap <= lastCap(); cap++) {
    // EINVAL: a capability this kernel does not know (a newer header); nothing to drop.
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) return err();
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) return err();
  return 0;
}

int privClearCapabilities() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  return syscall(SYS_capset, &hdr, data) < 0 ? err() : 0;
}

int privLookupUser(const char* name, uint32_t* uid, uint32_t* gid, std::vector<uint32_t>* groups) {
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(size > 0 ? size : 16384);
  passwd pw{};
  passwd* found = nullptr;
  int r;
  while ((r = getpwnam_r(name, &pw, buf.data(), buf.size(), &found)) == ERANGE) buf.resize(buf.size() * 2);
  if (r != 0) return -r;
  if (!found) return -ENOENT;
  *uid = pw.pw_uid;
  *gid = pw.pw_gid;
  int n = 32;
  std::vector<gid_t> g(n);
  while (getgrouplist(name, pw.pw_gid, g.data(), &n) < 0) g.resize(n);
  groups->assign(g.begin(), g.begin() + n);
  return 0;
}

}  // namespace kvmnative
