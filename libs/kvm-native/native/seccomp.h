// Generic seccomp plumbing: no policy here. The filter program and the
// syscall names come from JS (apps/vmm/src/sandbox).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvmnative {

// The exit status of a process stopped by the SIGSYS reporter (128 + SIGSYS).
constexpr int kSeccompTrapExitStatus = 159;

// Installs a SIGSYS handler for SECCOMP_RET_TRAP: it writes
// "<prefix><names[nr]> (<nr>)<suffix>\n" to stderr with write(2) and ends the
// process with exit_group(159). `names` is indexed by syscall number (empty:
// the number only). With a non-empty `argsPrefix` (x86_64), a second line
// "<argsPrefix>0x<arg0> 0x<arg1>\n" gives the call's first two arguments.
// Call before sysSeccompInstall.
int sysSeccompSetTrapReporter(const std::string& prefix, const std::string& suffix, const std::vector<std::string>& names,
                              const std::string& argsPrefix);

// prctl(PR_SET_NO_NEW_PRIVS, 1), then seccomp(SECCOMP_SET_MODE_FILTER,
// SECCOMP_FILTER_FLAG_TSYNC) with the classic-BPF program `insns` (count
// struct sock_filter of 8 bytes each). Returns 0, -errno, or the id (> 0) of
// a thread TSYNC could not synchronize.
long sysSeccompInstall(const void* insns, size_t count);

}  // namespace kvmnative
