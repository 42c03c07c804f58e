// The vCPU run loop: KVM_RUN on its own thread. Plain C++, no N-API.
// Every exit that KVM hands to userspace is passed to a hook that blocks
// until the owner (JS) has completed it and says what to do next.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <thread>

struct kvm_run;

namespace kvmnative {

class VcpuLoop {
 public:
  enum Action { kContinue = 0, kStop = 1, kPause = 2 };
  // onExit runs on the vCPU thread and must block until the exit is completed.
  using ExitHook = std::function<int(uint32_t exitReason)>;
  // onState runs on the vCPU thread and must not block: "paused" and
  // "running" with the generation of the request they answer, "stopped", or
  // "error" with an errno.
  using StateHook = std::function<void(const char* state, int err)>;

  VcpuLoop(int vcpuFd, kvm_run* run, ExitHook onExit, StateHook onState);
  ~VcpuLoop();

  void start();   // starts the thread (running)
  // Each pause/resume request carries a generation (increasing, chosen by the
  // owner); "paused" and "running" report the generation they answer, so a
  // late acknowledgement of an older request is recognisable as such.
  void pause(uint32_t gen);   // asynchronous: the thread reports "paused" once out of KVM_RUN
  void resume(uint32_t gen);  // asynchronous: the thread reports "running"
  void stop();    // asynchronous: the thread reports "stopped" and ends
  void join();
  bool started() const { return thread_.joinable(); }
  // The thread's kernel id (gettid), 0 until it has started running: for
  // /proc/self/task/TID (e.g. its run-queue wait in schedstat).
  int tid() const { return kernelTid_.load(std::memory_order_acquire); }

 private:
  void loop();
  void kick();

  int fd_;
  kvm_run* run_;
  ExitHook onExit_;
  StateHook onState_;
  std::thread thread_;
  pthread_t tid_{};
  std::atomic<int> kernelTid_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool paused_ = false;
  bool stopping_ = false;
  uint32_t gen_ = 0;  // generation of the latest pause/resume request
};

// ExitMailbox: the hand-off of one exit at a time between a vCPU thread
// (exchange) and the thread that completes exits (pending, answer, poll): the
// JS main thread. One shared state word: no queue, no allocation, no lock.
//
// What a hand-off costs is mostly waking a sleeping thread (on this kind of
// host ~75 µs across CPUs, several µs on one). So when the two threads can run
// at the same time (more than one CPU allowed) each side spins a short while
// before sleeping: the vCPU thread for the answer, the completer, after an
// answer, for the same vCPU's next exit (poll), so that a guest exiting in a
// tight loop is served without waking anybody. A thread that shares its one
// CPU with the other never spins: it would only delay the thread it waits for.
// Spinning is adaptive, since the two threads may still share a CPU (a loaded
// host): a spin that ends without the event backs off (the next 8, 16, ...
// up to 1024 waits sleep at once); one that succeeds resets the back-off.
class SpinBudget {
 public:
  void setMax(int64_t ns) { maxNs_ = ns; }
  int64_t take() {
    if (skip_ == 0) return maxNs_;
    skip_--;
    return 0;
  }
  void result(bool gotIt) {
    if (gotIt) {
      penalty_ = 0;
    } else {
      penalty_ = penalty_ ? std::min(penalty_ * 2, 1024u) : 8u;
      skip_ = penalty_;
    }
  }

 private:
  int64_t maxNs_ = 0;
  uint32_t skip_ = 0;
  uint32_t penalty_ = 0;
};

class ExitMailbox {
 public:
  enum State : uint32_t { kIdle = 0, kPosted = 1, kAnswered = 2, kClosed = 3 };
  // Wakes the completer (the owner's uv_async_send); called for each exit
  // posted while the completer is not in poll().
  using Wake = void (*)(void* arg);

  ExitMailbox(Wake wake, void* wakeArg) : wake_(wake), wakeArg_(wakeArg) {}

  // Longest spins (0: never spin) of the vCPU thread waiting for an answer and
  // of the completer waiting for the next exit. Before the vCPU thread starts.
  void setSpin(int64_t vcpuNs, int64_t completerNs) {
    vcpuSpin_.setMax(vcpuNs);
    completerSpin_.setMax(completerNs);
  }

  // --- vCPU thread ---
  // Posts an exit and blocks until it is answered; returns the action, or
  // `closedAction` once the mailbox is closed.
  int exchange(uint32_t reason, int closedAction);

  // --- completer thread ---
  bool pending() const { return state_.load(std::memory_order_acquire) == kPosted; }
  uint32_t reason() const { return reason_; }
  void answer(int action);
  // Spins a short while for this mailbox's next exit; returns true when one
  // is pending. Gives up early when another mailbox's exit waits (that one
  // comes through the event loop).
  bool poll();
  // Ends a pending exchange with its closedAction and makes every later one
  // return at once (the owner is going away).
  void close();

 private:
  std::atomic<uint32_t> state_{kIdle};
  std::atomic<uint32_t> vcpuSleeping_{0};
  std::atomic<uint32_t> polling_{0};  // the completer is in poll(): no wake needed
  uint32_t reason_ = 0;
  int action_ = 0;
  SpinBudget vcpuSpin_;       // vCPU thread only
  SpinBudget completerSpin_;  // completer only
  Wake wake_;
  void* wakeArg_;
};

// True when the calling thread may run on more than one CPU (spinning can pay off).
bool moreThanOneCpuAllowed();

}  // namespace kvmnative
