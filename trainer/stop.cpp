#include "trainer/stop.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "core/error.h"
#include "core/strings.h"

namespace strata::train {
namespace {

// Written by the handler, read by the loop: lock-free atomics are
// async-signal-safe.
std::atomic<int> g_received{0};
std::atomic<bool> g_installed{false};
int g_requeue = 0;
struct sigaction g_previous[3];

void say(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

void on_stop_signal(int sig) {
  int none = 0;
  if (g_received.compare_exchange_strong(none, sig)) {
    say(sig == SIGINT ? "\nstrata: SIGINT: stopping after this step with a checkpoint "
                        "(SIGINT again aborts at once)\n"
        : sig == SIGTERM ? "\nstrata: SIGTERM: stopping after this step with a checkpoint\n"
                         : "\nstrata: requeue signal: stopping after this step with a "
                           "checkpoint\n");
    return;
  }
  if (sig == SIGINT) {  // the second: abort, as an interrupted process does
    say("\nstrata: second SIGINT: aborting without a checkpoint\n");
    ::signal(SIGINT, SIG_DFL);
    ::raise(SIGINT);
  }
}

int slot(int sig) { return sig == SIGINT ? 0 : sig == SIGTERM ? 1 : 2; }

}  // namespace

int stop_exit_code(int signal, int requeue_signal) {
  if (signal != 0 && signal == requeue_signal) return kRequeueExitCode;
  return 128 + signal;
}

int requeue_signal_number(const std::string& name) {
  if (name == "SIGUSR1") return SIGUSR1;
  if (name == "SIGUSR2") return SIGUSR2;
  if (name == "off") return 0;
  throw ConfigError(str("checkpoint.requeue_signal = ", quote(name),
                        "; use SIGUSR1, SIGUSR2 or off"));
}

std::string signal_name(int signal) {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return str("signal ", signal);
  }
}

StopSignals::StopSignals(int requeue_signal) {
  STRATA_INTERNAL_ASSERT(!g_installed.exchange(true), "StopSignals installed twice");
  g_received = 0;
  g_requeue = requeue_signal;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // system calls of other threads carry on
  for (int sig : {SIGINT, SIGTERM, requeue_signal}) {
    if (sig != 0) ::sigaction(sig, &sa, &g_previous[slot(sig)]);
  }
}

StopSignals::~StopSignals() {
  for (int sig : {SIGINT, SIGTERM, g_requeue}) {
    if (sig != 0) ::sigaction(sig, &g_previous[slot(sig)], nullptr);
  }
  g_installed = false;
}

int StopSignals::received() { return g_received.load(); }

void StopSignals::simulate(int signal) {
  int none = 0;
  g_received.compare_exchange_strong(none, signal);
}

StopAgreement::StopAgreement(std::shared_ptr<dist::Communicator> world, at::Device transport,
                             bool decides_clock)
    : world_(world && world->size() > 1 ? std::move(world) : nullptr),
      flags_(at::zeros({3}, at::TensorOptions(at::kLong).device(transport))),
      host_(at::zeros({3}, at::kLong)),
      decides_clock_(decides_clock) {}

StopAgreement::~StopAgreement() {
  try {
    finish();
  } catch (const std::exception&) {
    // A peer that died: the error that matters was raised elsewhere.
  }
}

StopDecision StopAgreement::after_step(int64_t step, bool checkpoint_due, bool writing) {
  const bool due = decides_clock_ && checkpoint_due;
  if (!world_) return StopDecision{StopSignals::received(), due, writing, step};
  StopDecision d;
  if (pending_) {
    pending_->wait();
    pending_.reset();
    host_.copy_(flags_);
    const int64_t* agreed = host_.data_ptr<int64_t>();
    d.signal = static_cast<int>(agreed[0]);
    d.checkpoint = agreed[1] != 0;
    d.writing = agreed[2] != 0;
    d.as_of = pending_step_;
  }
  // A checkpoint decided now resets the clock: do not ask for another.
  int64_t* mine = host_.data_ptr<int64_t>();
  mine[0] = StopSignals::received();
  mine[1] = due && !d.checkpoint;
  mine[2] = writing;
  flags_.copy_(host_);
  pending_ = world_->all_reduce(flags_, dist::ReduceOp::kMax);
  pending_step_ = step;
  return d;
}

void StopAgreement::finish() {
  if (!pending_) return;
  std::unique_ptr<dist::Work> w = std::move(pending_);
  w->wait();
}

}  // namespace strata::train
