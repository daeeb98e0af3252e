// Stopping a run early without losing work: pre-emption and interrupt
// signals, and the checkpoints that are due by the clock.
//
// Note [Stopping together]: SIGINT, SIGTERM and the requeue signal
// (checkpoint.requeue_signal, SIGUSR1 by default: what SLURM's
// `--signal=USR1@90` sends before pre-emption) only set a flag; a second
// SIGINT aborts at once. A signal may reach one rank and not the others
// (kill, a node's OOM killer, a scheduler that signals one host), so the
// ranks agree: after every step each rank contributes [its signal, a
// checkpoint due by rank 0's clock, a checkpoint it still writes in the
// background (Note [Asynchronous checkpoints])] to a MAX all-reduce over
// the world, and
// acts on the result together -- save a checkpoint, and for a signal stop
// with the same step on every rank. The all-reduce is issued at the end of
// one step and waited for at the end of the next, so it overlaps a step's
// compute instead of adding a round trip to it (decisions take effect one
// step late; one process needs no collective and acts at once).
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <string>

#include "distributed/communicator.h"

namespace strata::train {

// Exit codes of a run that stopped on a signal (documented in README.md):
// 130 SIGINT, 143 SIGTERM (the shells' 128 + signal), 75 the requeue
// signal: "checkpointed for requeue" (EX_TEMPFAIL: the job script requeues;
// launch/strata-run passes it on without restarting).
constexpr int kRequeueExitCode = 75;
int stop_exit_code(int signal, int requeue_signal);

// The signal of checkpoint.requeue_signal ("SIGUSR1", "SIGUSR2"; 0 for
// "off").
int requeue_signal_number(const std::string& name);
std::string signal_name(int signal);  // "SIGTERM"

// Process-wide handlers for SIGINT, SIGTERM and `requeue_signal` (0: none)
// while it lives; the previous ones are restored after. One at a time.
class StopSignals {
 public:
  explicit StopSignals(int requeue_signal);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first stop signal received, 0 for none.
  static int received();
  // For tests: as if `signal` had arrived.
  static void simulate(int signal);
};

struct StopDecision {
  int signal = 0;           // stop now (every rank), for this signal
  bool checkpoint = false;  // save a checkpoint now (every rank)
  bool writing = false;     // some rank still writes a checkpoint in the background
  int64_t as_of = -1;       // the step after which the ranks said so (-1: nothing agreed yet)
};

// The agreement of Note [Stopping together]. Collective: every rank calls
// after_step once per step and finish once at the end.
class StopAgreement {
 public:
  // `world`: every rank of the run (null or size 1: one process);
  // `transport`: where that communicator's tensors live.
  StopAgreement(std::shared_ptr<dist::Communicator> world, at::Device transport,
                bool decides_clock);
  ~StopAgreement();

  // This rank's signal and, on the rank that decides the clock, whether a
  // time-based checkpoint is due; returns what all ranks agreed (for the
  // previous step's contributions when there are several ranks).
  StopDecision after_step(int64_t step, bool checkpoint_due, bool writing = false);
  // Completes the outstanding all-reduce (nothing left in flight).
  void finish();

 private:
  std::shared_ptr<dist::Communicator> world_;
  at::Tensor flags_;  // [signal, checkpoint due, writing] being reduced
  at::Tensor host_;   // the same on the host: no allocation per step
  int64_t pending_step_ = -1;  // the step whose flags are being reduced
  std::unique_ptr<dist::Work> pending_;
  bool decides_clock_;
};

}  // namespace strata::train
