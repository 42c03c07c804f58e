#include "vcpu.h"

#include <cerrno>
#include <csignal>
#include <linux/kvm.h>
#include <sys/ioctl.h>

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

}  // namespace kvmnative
