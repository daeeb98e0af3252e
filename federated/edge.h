// One edge client's life: fetch the model, learn (local epochs when
// selected in sync mode, online over its sample stream in async mode),
// submit the update, pick up new versions, until the server says finished.
// Used by strata-edge (one client) and strata-fedsim (many, as threads).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "federated/client.h"
#include "federated/dp.h"
#include "federated/learner.h"
#include "trainer/recipe.h"

namespace strata::fed {

// Limits how many clients of one process compute at the same time.
class Semaphore {
 public:
  explicit Semaphore(int64_t count) : count_(count) {}
  void acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return count_ > 0; });
    --count_;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++count_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t count_;
};

// What a misbehaving client does to its honest update.
enum class Attack { kNone, kScaled, kSignFlip, kRandom };
Attack parse_attack(const std::string& name);  // recipe federated.sim.attack

struct EdgeRunOptions {
  const train::Recipe* recipe = nullptr;  // model, optimizer, data.batch_size, train, federated
  const train::Registries* registries = nullptr;  // the optimizer
  uint64_t seed = 0;
  Attack attack = Attack::kNone;
  double attack_scale = 100.0;
  Semaphore* compute = nullptr;           // optional
  const std::atomic<bool>* stop = nullptr;  // optional
  std::optional<ClientDrift> drift;  // federated.sim.drift of a simulated client (client_drift)
  double dropout = 0.0;  // federated.sim.dropout: the share of updates after which it drops out
  std::string name;      // for progress lines (strata-edge prints one per round)
  bool report = false;   // log one INFO line per submitted update
};

struct EdgeRunStats {
  int64_t submitted = 0;
  int64_t accepted = 0;
  int64_t refused = 0;
  int64_t samples = 0;
  int64_t dropped = 0;  // rounds it dropped out of after submitting (federated.sim.dropout)
  std::string last_refusal;
  // federated.privacy.mode=local: the epsilon this client's updates spent
  // (at federated.privacy.delta), and whether it stopped for its budget.
  double epsilon = 0.0;
  bool budget_spent = false;
  // Async: prequential counts over every instance learned online.
  int64_t online_instances = 0;
  double online_errors = 0.0;
  double online_error() const {
    return online_instances > 0 ? online_errors / static_cast<double>(online_instances) : 0.0;
  }
};

// The flat update `delta` clipped to L2 norm c (> 0) as the server will
// decode it in `enc`: a lossy encoding moves the norm (int8 rounding can
// raise it by percents), so the encoded update is measured and scaled down
// once more when it is above c (int8 then scales exactly; fp16 stays within
// 2^-11 of c). Central DP with client_clip.
at::Tensor clip_encoded(const at::Tensor& delta, double c, const TensorLayout& layout,
                        const EncodeOptions& enc);

// federated.privacy.mode=local as the client's mechanism (nullopt for other
// modes); ConfigError for settings it cannot run with (no noise, a budget
// smaller than one update).
std::optional<LocalDp> local_dp(const train::Recipe& recipe);

// Runs until the server reports the end (or *stop), or, with local DP and
// a budget, until the next update would exceed it. CommError when the
// server stays unreachable beyond the client's retries.
EdgeRunStats run_edge(EdgeClient& client, std::shared_ptr<train::Model> model,
                      const LocalData& data, const EdgeRunOptions& options);

}  // namespace strata::fed
