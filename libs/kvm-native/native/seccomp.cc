// Generic seccomp plumbing (see seccomp.h). No N-API here.
#include "seccomp.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <unistd.h>

#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1  // si_code of a seccomp SIGSYS (asm-generic/siginfo.h)
#endif

namespace kvmnative {

namespace {

// Preformatted lines, built before the filter is installed: the handler only
// copies bytes and calls write(2) and exit_group(2), both async-signal-safe.
std::vector<std::string>* gLines = nullptr;
std::string* gPrefix = nullptr;
std::string* gSuffix = nullptr;
std::string* gArgsPrefix = nullptr;

void writeAll(const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(2, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// "0x" and 16 hex digits of v into out (18 bytes).
void hex(uint64_t v, char* out) {
  out[0] = '0';
  out[1] = 'x';
  for (int i = 0; i < 16; i++) out[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xf];
}

// The first two arguments of the refused call, from the registers the kernel
// left in the signal frame (x86_64 system call convention: rdi, rsi).
void writeArgs(void* uc) {
#if defined(__x86_64__)
  if (!gArgsPrefix || gArgsPrefix->empty()) return;
  const auto* ctx = static_cast<const ucontext_t*>(uc);
  char line[38];
  hex(static_cast<uint64_t>(ctx->uc_mcontext.gregs[REG_RDI]), line);
  line[18] = ' ';
  hex(static_cast<uint64_t>(ctx->uc_mcontext.gregs[REG_RSI]), line + 19);
  line[37] = '\n';
  writeAll(gArgsPrefix->data(), gArgsPrefix->size());
  writeAll(line, sizeof line);
#else
  (void)uc;
#endif
}

void onSigsys(int, siginfo_t* info, void* uc) {
  if (info->si_code != SYS_SECCOMP) {
    // Sent by someone (kill -SYS): end as the default action would, but say so.
    static const char msg[] = "SIGSYS received from outside (not a refused system call); exiting\n";
    writeAll(msg, sizeof msg - 1);
    syscall(SYS_exit_group, kSeccompTrapExitStatus);
  }
  int nr = info->si_syscall;
  if (gLines && nr >= 0 && static_cast<size_t>(nr) < gLines->size() && !(*gLines)[nr].empty()) {
    writeAll((*gLines)[nr].data(), (*gLines)[nr].size());
  } else {
    char digits[16];
    int len = 0;
    unsigned v = static_cast<unsigned>(nr);
    do {
      digits[sizeof digits - 1 - len++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v && len < 15);
    if (gPrefix) writeAll(gPrefix->data(), gPrefix->size());
    writeAll(digits + sizeof digits - len, static_cast<size_t>(len));
    if (gSuffix) writeAll(gSuffix->data(), gSuffix->size());
    writeAll("\n", 1);
  }
  writeArgs(uc);
  syscall(SYS_exit_group, kSeccompTrapExitStatus);
}

}  // namespace

int sysSeccompSetTrapReporter(const std::string& prefix, const std::string& suffix, const std::vector<std::string>& names, const std::string& argsPrefix) {
  auto* lines = new std::vector<std::string>();
  for (size_t nr = 0; nr < names.size(); nr++)
    lines->push_back(names[nr].empty() ? std::string() : prefix + names[nr] + " (" + std::to_string(nr) + ")" + suffix + "\n");
  // Kept for the life of the process: the handler may run on any thread at any time.
  gLines = lines;
  gPrefix = new std::string(prefix);
  gSuffix = new std::string(suffix);
  gArgsPrefix = new std::string(argsPrefix);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = onSigsys;
  sa.sa_flags = SA_SIGINFO;
  sigfillset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) < 0) return -errno;
  return 0;
}

long sysSeccompInstall(const void* insns, size_t count) {
  if (count == 0 || count > BPF_MAXINSNS) return -EINVAL;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -errno;
  sock_fprog prog;
  prog.len = static_cast<unsigned short>(count);
  prog.filter = static_cast<sock_filter*>(const_cast<void*>(insns));
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
  if (r < 0) return -errno;
  return r;
}

}  // namespace kvmnative
