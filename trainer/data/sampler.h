// Which sample indices each rank reads, epoch by epoch.
//
// Training (ShardedSampler): every epoch is a permutation of [0, N) that is a
// pure function of (seed, epoch) (Note [Deterministic data] in
// core/random.h). The permutation is cut to a multiple of `world` and rank r
// takes positions r, r + world, r + 2*world, ...: every rank gets the same
// count, and no sample is read twice in an epoch. The (at most world - 1)
// samples cut from the tail change from epoch to epoch when shuffling.
// This matches torch.utils.data.DistributedSampler(drop_last=True).
//
// Evaluation (shard_range): contiguous, exactly-once shards whose sizes differ
// by at most one; per-rank counts are summed, not padded.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace strata::train {

struct SamplerOptions {
  int64_t num_samples = 0;  // N, > 0
  int rank = 0;             // in [0, world)
  int world = 1;            // >= 1, <= N
  bool shuffle = true;      // false: epoch order is 0, 1, 2, ...
  uint64_t seed = 0;        // run.seed
};

class ShardedSampler {
 public:
  explicit ShardedSampler(SamplerOptions options);

  int64_t samples_per_rank() const { return per_rank_; }
  // This rank's indices for `epoch`, in reading order.
  std::vector<int64_t> epoch_indices(int64_t epoch) const;

 private:
  SamplerOptions options_;
  int64_t per_rank_;
};

// [begin, end) of rank's contiguous evaluation shard of n samples.
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world);

}  // namespace strata::train
