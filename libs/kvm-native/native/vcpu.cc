#include "vcpu.h"

#include <cerrno>
#include <csignal>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <linux/kvm.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sys.h"

namespace kvmnative {

VcpuLoop::VcpuLoop(int vcpuFd, kvm_run* run, ExitHook onExit, StateHook onState)
    : fd_(vcpuFd), run_(run), onExit_(std::move(onExit)), onState_(std::move(onState)) {}

VcpuLoop::~VcpuLoop() {
  stop();
  join();
}

void VcpuLoop::start() {
  installKickSignalHandler();
  thread_ = std::thread([this] { loop(); });
  tid_ = thread_.native_handle();
}

void VcpuLoop::kick() {
  // SAFETY: run_ is the vCPU's kvm_run mapping, alive as long as this loop.
  // immediate_exit makes a KVM_RUN that has not started yet return EINTR; the
  // signal interrupts one already running.
  __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
  if (thread_.joinable()) pthread_kill(tid_, kickSignal());
}

void VcpuLoop::pause(uint32_t gen) {
  {
    std::lock_guard<std::mutex> g(mu_);
    paused_ = true;
    gen_ = gen;
  }
  cv_.notify_all();  // a thread still paused for an older request acknowledges this one
  kick();
}

void VcpuLoop::resume(uint32_t gen) {
  {
    std::lock_guard<std::mutex> g(mu_);
    paused_ = false;
    gen_ = gen;
  }
  cv_.notify_all();
}

void VcpuLoop::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  kick();
}

void VcpuLoop::join() {
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
}

void VcpuLoop::loop() {
  kernelTid_.store(static_cast<int>(syscall(SYS_gettid)), std::memory_order_release);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kickSignal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);

  bool reportedPause = false;
  bool exitPending = false;  // an exit was handled and KVM_RUN not re-entered since
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (paused_ && !stopping_ && exitPending) {
        // The last exit's I/O is complete (IN data in RAX, RIP past the
        // instruction) only once KVM_RUN is re-entered: do that with
        // immediate_exit set, so the state userspace saves while paused is
        // consistent (KVM API: "the kernel side will first finish incomplete
        // operations and then check for pending signals").
        lk.unlock();
        __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
        ioctl(fd_, KVM_RUN, 0);
        __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_SEQ_CST);
        exitPending = false;
        lk.lock();
      }
      if (paused_ && !stopping_) {
        const uint32_t gen = gen_;
        onState_("paused", static_cast<int>(gen));
        reportedPause = true;
        // Wake on resume, stop, or a newer request (resume then pause again
        // before this thread ran): that one is acknowledged on its own.
        cv_.wait(lk, [this, gen] { return !paused_ || stopping_ || gen_ != gen; });
        if (paused_ && !stopping_) continue;
      }
      if (stopping_) break;
      if (reportedPause) {
        reportedPause = false;
        onState_("running", static_cast<int>(gen_));
      }
    }
    long r = ioctl(fd_, KVM_RUN, 0);
    exitPending = false;
    if (r < 0) {
      int e = errno;
      if (e == EINTR || e == EAGAIN) {
        __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_SEQ_CST);
        continue;  // re-check pause/stop
      }
      onState_("error", e);
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
      break;
    }
    if (run_->exit_reason == KVM_EXIT_INTR) continue;
    exitPending = true;
    int action = onExit_(run_->exit_reason);
    if (action == kStop) {
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
      break;
    }
    if (action == kPause) {
      std::lock_guard<std::mutex> g(mu_);
      paused_ = true;
    }
  }
  onState_("stopped", 0);
}

namespace {

// Exits posted and not answered yet, over every mailbox of the process: a
// completer polling one vCPU stops as soon as another vCPU waits.
std::atomic<int> g_unanswered{0};

inline void cpuRelax() { __builtin_ia32_pause(); }

inline int64_t nowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline uint32_t* word(std::atomic<uint32_t>* a) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
  return reinterpret_cast<uint32_t*>(a);
}

void futexWait(std::atomic<uint32_t>* a, uint32_t expected) {
  // EAGAIN (value changed) and EINTR (the kick signal) both mean: look again.
  syscall(SYS_futex, word(a), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futexWake(std::atomic<uint32_t>* a, int n) { syscall(SYS_futex, word(a), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0); }

}  // namespace

int ExitMailbox::exchange(uint32_t reason, int closedAction) {
  reason_ = reason;
  uint32_t expected = kIdle;
  if (!state_.compare_exchange_strong(expected, kPosted)) return closedAction;
  g_unanswered.fetch_add(1);
  // Dekker with poll(): either the completer sees kPosted before it stops
  // polling, or this load sees polling_ == 0 and wakes it.
  if (polling_.load() == 0) wake_(wakeArg_);
  if (const int64_t spinNs = vcpuSpin_.take(); spinNs > 0) {
    const int64_t t0 = nowNs();
    for (unsigned i = 1; state_.load(std::memory_order_acquire) == kPosted; i++) {
      cpuRelax();
      if ((i & 63) == 0 && nowNs() - t0 > spinNs) break;
    }
    vcpuSpin_.result(state_.load(std::memory_order_acquire) != kPosted);
  }
  for (;;) {
    uint32_t s = state_.load(std::memory_order_acquire);
    if (s == kAnswered) {
      int action = action_;
      expected = kAnswered;
      state_.compare_exchange_strong(expected, kIdle);  // fails only if closed meanwhile
      return action;
    }
    if (s == kClosed) return closedAction;
    // Dekker with answer(): either it sees vcpuSleeping_ and wakes us, or the
    // futex finds the state changed and returns at once.
    vcpuSleeping_.store(1);
    futexWait(&state_, kPosted);
    vcpuSleeping_.store(0);
  }
}

void ExitMailbox::answer(int action) {
  action_ = action;
  uint32_t expected = kPosted;
  if (!state_.compare_exchange_strong(expected, kAnswered)) return;
  g_unanswered.fetch_sub(1);
  if (vcpuSleeping_.load()) futexWake(&state_, 1);
}

bool ExitMailbox::poll() {
  const int64_t spinNs = completerSpin_.take();
  if (spinNs <= 0) return pending();
  polling_.store(1);
  const int64_t t0 = nowNs();
  bool timedOut = false;
  for (unsigned i = 1;; i++) {
    if (state_.load(std::memory_order_acquire) == kPosted) break;
    if (g_unanswered.load(std::memory_order_relaxed) > 0) break;  // another vCPU waits (or ours, just posted)
    if ((i & 63) == 0 && nowNs() - t0 > spinNs) {
      timedOut = true;
      break;
    }
    cpuRelax();
  }
  polling_.store(0);
  const bool got = pending();  // after clearing polling_: a post that saw polling_ == 1 is caught here
  completerSpin_.result(got || !timedOut);
  return got;
}

void ExitMailbox::close() {
  if (state_.exchange(kClosed) == kPosted) g_unanswered.fetch_sub(1);
  futexWake(&state_, INT_MAX);
}

bool moreThanOneCpuAllowed() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return true;
  return CPU_COUNT(&set) > 1;
}

}  // namespace kvmnative
