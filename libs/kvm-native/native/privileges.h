// Process credentials: chroot, groups, ids and capabilities (generic plumbing
// for dropping privileges; the order and policy live in the caller).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kvmnative {

// Every function returns >= 0 on success or -errno on failure.

// chroot(dir) then chdir("/").
int privChroot(const char* dir);
// setgroups / setresgid / setresuid through glibc, which applies them to every
// thread of the process (the raw syscalls change only the calling thread).
int privSetGroups(const std::vector<uint32_t>& gids);
int privSetResGid(uint32_t rgid, uint32_t egid, uint32_t sgid);
int privSetResUid(uint32_t ruid, uint32_t euid, uint32_t suid);
// Drops every capability from the calling thread's bounding set
// (PR_CAPBSET_DROP, 0..cap_last_cap; needs CAP_SETPCAP) and clears its ambient set.
int privDropBoundingAndAmbient();
// capset(2) of the calling thread: empty effective, permitted and inheritable sets.
int privClearCapabilities();
// The user's uid, primary gid and groups (getpwnam_r + getgrouplist); -ENOENT when unknown.
int privLookupUser(const char* name, uint32_t* uid, uint32_t* gid, std::vector<uint32_t>* groups);

}  // namespace kvmnative
