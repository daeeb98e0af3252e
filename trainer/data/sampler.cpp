#include "trainer/data/sampler.h"

#include <numeric>

#include "core/error.h"
#include "core/random.h"

namespace strata::train {

ShardedSampler::ShardedSampler(SamplerOptions options) : options_(options) {
  STRATA_CHECK_T(ConfigError, options_.world >= 1 && options_.rank >= 0 &&
                                  options_.rank < options_.world,
                 "sampler: rank ", options_.rank, " is outside world size ",
                 options_.world);
  STRATA_CHECK_T(DataError, options_.num_samples >= options_.world,
                 "sampler: ", options_.num_samples,
                 " samples cannot be shared by ", options_.world,
                 " ranks; use more data or fewer ranks");
  per_rank_ = options_.num_samples / options_.world;
}

std::vector<int64_t> ShardedSampler::epoch_indices(int64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(options_.num_samples));
  std::iota(order.begin(), order.end(), 0);
  if (options_.shuffle) {
    // Stream id 2^63 cannot collide with a sample index (the augmentation
    // streams in loader.cpp).
    Rng rng(mix_seed(options_.seed, static_cast<uint64_t>(epoch), 1ull << 63));
    for (size_t i = order.size() - 1; i > 0; --i) {  // Fisher-Yates
      std::swap(order[i], order[rng.below(i + 1)]);
    }
  }
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(per_rank_));
  for (int64_t k = 0; k < per_rank_; ++k) {
    mine.push_back(order[static_cast<size_t>(k * options_.world +
                                             options_.rank)]);
  }
  return mine;
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world) {
  const int64_t base = n / world;
  const int64_t extra = n % world;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

}  // namespace strata::train
