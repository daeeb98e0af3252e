// Pipeline-parallel schedules as pure action lists.
//
// A schedule says, for one stage of a p-stage pipeline and m microbatches,
// what that stage does and in which order: receive an activation, run a
// forward, send its output, receive an output gradient, run a backward, send
// the input gradient. It holds no tensors and talks to no one, so it is
// tested alone (every microbatch forward and backward once per stage, sends
// matched by receives in order, no deadlock, peak activations held) and one
// executor runs any schedule.
//
//   gpipe  all m forwards, then all m backwards (Huang et al. 2019): a stage
//          holds the activations of all m microbatches.
//   1f1b   stage s runs min(p - s - 1, m) warm-up forwards, then alternates
//          one forward and one backward, then drains the backwards
//          (PipeDream-flush, Narayanan et al. 2021): a stage holds at most
//          p - s microbatches' activations, never more than p.
//
// Both take (m + p - 1) forward and backward slots per stage when F and B
// cost the same everywhere: an idle share (the bubble) of (p - 1) / m
// relative to the m slots of useful work.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::dist {

enum class PipeOp {
  kRecvActivation,  // from stage s - 1
  kForward,
  kSendActivation,  // to stage s + 1
  kRecvGrad,        // from stage s + 1
  kBackward,
  kSendGrad,        // to stage s - 1
};

struct PipeAction {
  PipeOp op;
  int microbatch;
  bool operator==(const PipeAction& o) const { return op == o.op && microbatch == o.microbatch; }
};

// "F3", "B0", "recvA2", ... for messages and tests.
std::string to_string(const PipeAction& a);
std::string to_string(const std::vector<PipeAction>& actions);

// The schedule names pipeline_schedule accepts.
const std::vector<std::string>& pipeline_schedule_names();

// Stage `stage` (0-based) of `stages` with `microbatches`. ConfigError for an
// unknown name (listing the valid ones) or sizes < 1.
std::vector<PipeAction> pipeline_schedule(const std::string& name, int stages, int stage,
                                          int microbatches);

// Most microbatches whose forward ran and whose backward has not: the
// activations a stage holds at its peak.
int peak_activations(const std::vector<PipeAction>& actions);

// The layers of a model split into `stages` contiguous non-empty runs that
// minimise the heaviest stage's weight (parameters per layer; ties: the
// earliest split). Returns the layer count of each stage. ConfigError when
// there are fewer layers than stages.
std::vector<int64_t> partition_layers(const std::vector<int64_t>& weights, int stages);

// Runs every stage's actions against each other with a forward costing
// `forward_cost`, a backward `backward_cost` and communication free: an
// action waits for the message it receives. Returns the makespan, or throws
// InternalError naming the stuck stages on a deadlock or an unmatched send.
double simulate_pipeline(const std::vector<std::vector<PipeAction>>& stages,
                         double forward_cost = 1.0, double backward_cost = 2.0);

}  // namespace strata::dist
