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
  std::string name;      // for progress lines (strata-edge prints one per round)
  bool report = false;   // log one INFO line per submitted update
};

struct EdgeRunStats {
  int64_t submitted = 0;
  int64_t accepted = 0;
  int64_t refused = 0;
  int64_t samples = 0;
  std::string last_refusal;
  // Async: prequential counts over every instance learned online.
  int64_t online_instances = 0;
  double online_errors = 0.0;
  double online_error() const {
    return online_instances > 0 ? online_errors / static_cast<double>(online_instances) : 0.0;
  }
};

// Runs until the server reports the end (or *stop). CommError when the
// server stays unreachable beyond the client's retries.
EdgeRunStats run_edge(EdgeClient& client, std::shared_ptr<train::Model> model,
                      const LocalData& data, const EdgeRunOptions& options);

}  // namespace strata::fed
