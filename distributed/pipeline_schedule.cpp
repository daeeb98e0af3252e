#include "distributed/pipeline_schedule.h"

#include <algorithm>
#include <limits>
#include <map>

#include "core/error.h"
#include "core/strings.h"

namespace strata::dist {

std::string to_string(const PipeAction& a) {
  const char* op = "?";
  switch (a.op) {
    case PipeOp::kRecvActivation: op = "recvA"; break;
    case PipeOp::kForward: op = "F"; break;
    case PipeOp::kSendActivation: op = "sendA"; break;
    case PipeOp::kRecvGrad: op = "recvG"; break;
    case PipeOp::kBackward: op = "B"; break;
    case PipeOp::kSendGrad: op = "sendG"; break;
  }
  return op + std::to_string(a.microbatch);
}

std::string to_string(const std::vector<PipeAction>& actions) {
  std::vector<std::string> parts;
  for (const auto& a : actions) parts.push_back(to_string(a));
  return join(parts, " ");
}

const std::vector<std::string>& pipeline_schedule_names() {
  static const std::vector<std::string> names{"gpipe", "1f1b"};
  return names;
}

std::vector<PipeAction> pipeline_schedule(const std::string& name, int stages, int stage,
                                          int microbatches) {
  STRATA_CHECK_T(ConfigError, stages >= 1 && stage >= 0 && stage < stages && microbatches >= 1,
                 "pipeline schedule: stage ", stage, " of ", stages, " with ", microbatches,
                 " microbatches is not a valid layout (stages >= 1, 0 <= stage < stages, "
                 "microbatches >= 1)");
  const bool first = stage == 0, last = stage == stages - 1;
  std::vector<PipeAction> out;
  auto forward = [&](int mb) {
    if (!first) out.push_back({PipeOp::kRecvActivation, mb});
    out.push_back({PipeOp::kForward, mb});
    if (!last) out.push_back({PipeOp::kSendActivation, mb});
  };
  auto backward = [&](int mb) {
    if (!last) out.push_back({PipeOp::kRecvGrad, mb});
    out.push_back({PipeOp::kBackward, mb});
    if (!first) out.push_back({PipeOp::kSendGrad, mb});
  };
  if (name == "gpipe") {
    for (int mb = 0; mb < microbatches; ++mb) forward(mb);
    for (int mb = 0; mb < microbatches; ++mb) backward(mb);
  } else if (name == "1f1b") {
    const int warmup = std::min(stages - stage - 1, microbatches);
    for (int mb = 0; mb < warmup; ++mb) forward(mb);
    for (int i = 0; i < microbatches - warmup; ++i) {
      forward(warmup + i);
      backward(i);
    }
    for (int mb = microbatches - warmup; mb < microbatches; ++mb) backward(mb);
  } else {
    throw ConfigError(str("unknown pipeline schedule '", name, "';",
                          did_you_mean(name, pipeline_schedule_names()),
                          " valid: ", join(pipeline_schedule_names(), ", ")));
  }
  return out;
}

int peak_activations(const std::vector<PipeAction>& actions) {
  int held = 0, peak = 0;
  for (const auto& a : actions) {
    if (a.op == PipeOp::kForward) peak = std::max(peak, ++held);
    if (a.op == PipeOp::kBackward) --held;
  }
  return peak;
}

double simulate_pipeline(const std::vector<std::vector<PipeAction>>& stages,
                         double forward_cost, double backward_cost) {
  const int p = static_cast<int>(stages.size());
  // (channel, microbatch) -> time the message is available. Channel 2s:
  // activations s -> s+1; channel 2s+1: gradients s+1 -> s. Each channel is
  // FIFO: the order of receives must be the order of sends.
  std::map<std::pair<int, int>, double> ready;
  std::map<int, std::vector<int>> sent, received;
  std::vector<size_t> next(p, 0);
  std::vector<double> clock(p, 0.0);
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      while (next[s] < stages[s].size()) {
        const PipeAction& a = stages[s][next[s]];
        int channel = -1;
        bool recv = false;
        switch (a.op) {
          case PipeOp::kRecvActivation: channel = 2 * (s - 1); recv = true; break;
          case PipeOp::kSendActivation: channel = 2 * s; break;
          case PipeOp::kRecvGrad: channel = 2 * s + 1; recv = true; break;
          case PipeOp::kSendGrad: channel = 2 * (s - 1) + 1; break;
          case PipeOp::kForward: clock[s] += forward_cost; break;
          case PipeOp::kBackward: clock[s] += backward_cost; break;
        }
        STRATA_INTERNAL_ASSERT(channel >= -1 && channel < 2 * (p - 1) + 2,
                               "stage ", s, " talks past the pipeline ends: ", to_string(a));
        if (recv) {
          auto it = ready.find({channel, a.microbatch});
          if (it == ready.end()) break;  // blocked until the sender gets there
          clock[s] = std::max(clock[s], it->second);
          received[channel].push_back(a.microbatch);
          const auto& order = sent[channel];
          STRATA_INTERNAL_ASSERT(received[channel].size() <= order.size() &&
                                 order[received[channel].size() - 1] == a.microbatch,
                                 "stage ", s, " receives ", to_string(a),
                                 " out of the order its peer sent");
        } else if (channel >= 0) {
          ready[{channel, a.microbatch}] = clock[s];
          sent[channel].push_back(a.microbatch);
        }
        ++next[s];
        progress = true;
      }
    }
  }
  std::vector<std::string> stuck;
  for (int s = 0; s < p; ++s) {
    if (next[s] < stages[s].size()) {
      stuck.push_back(str("stage ", s, " at ", to_string(stages[s][next[s]])));
    }
  }
  STRATA_INTERNAL_ASSERT(stuck.empty(), "pipeline deadlock: ", join(stuck, "; "));
  for (const auto& [channel, order] : sent) {
    STRATA_INTERNAL_ASSERT(received[channel].size() == order.size(), "channel ", channel,
                           ": ", order.size(), " sends but ", received[channel].size(),
                           " receives");
  }
  return *std::max_element(clock.begin(), clock.end());
}

std::vector<int64_t> partition_layers(const std::vector<int64_t>& weights, int stages) {
  const int n = static_cast<int>(weights.size());
  STRATA_CHECK_T(ConfigError, stages >= 1 && n >= stages, "cannot split ", n,
                 " layer(s) into ", stages, " pipeline stages; use at most ", n, " stages");
  std::vector<int64_t> prefix(n + 1, 0);
  for (int i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + weights[i];
  // best[s][i]: the lightest heaviest stage splitting the first i layers
  // into s stages; cut[s][i]: where the last of them starts.
  constexpr int64_t kInf = std::numeric_limits<int64_t>::max();
  std::vector<std::vector<int64_t>> best(stages + 1, std::vector<int64_t>(n + 1, kInf));
  std::vector<std::vector<int>> cut(stages + 1, std::vector<int>(n + 1, 0));
  best[0][0] = 0;
  for (int s = 1; s <= stages; ++s) {
    for (int i = s; i <= n; ++i) {
      for (int j = s - 1; j < i; ++j) {
        if (best[s - 1][j] == kInf) continue;
        const int64_t cost = std::max(best[s - 1][j], prefix[i] - prefix[j]);
        if (cost < best[s][i]) {
          best[s][i] = cost;
          cut[s][i] = j;
        }
      }
    }
  }
  std::vector<int64_t> counts(stages);
  for (int s = stages, i = n; s >= 1; --s) {
    counts[s - 1] = i - cut[s][i];
    i = cut[s][i];
  }
  return counts;
}

}  // namespace strata::dist
