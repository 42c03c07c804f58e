// The vCPU run loop: KVM_RUN on its own thread. Plain C++, no N-API.
// Every exit that KVM hands to userspace is passed to a hook that blocks
// until the owner (JS) has completed it and says what to do next.
#pragma once
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

 private:
  void loop();
  void kick();

  int fd_;
  kvm_run* run_;
  ExitHook onExit_;
  StateHook onState_;
  std::thread thread_;
  pthread_t tid_{};
  std::mutex mu_;
  std::condition_variable cv_;
  bool paused_ = false;
  bool stopping_ = false;
  uint32_t gen_ = 0;  // generation of the latest pause/resume request
};

}  // namespace kvmnative
