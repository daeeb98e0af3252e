// Counter-based, platform-independent random numbers for data order and
// augmentation.
//
// Note [Deterministic data]: shuffles and augmentations are pure functions of
// (seed, epoch, sample index), never of a stateful generator advanced by a
// background thread. A resumed run, a run with a different prefetch depth, or
// a rank of a data-parallel job therefore sees exactly the same samples with
// exactly the same augmentations as the uninterrupted single run would.
// std::uniform_int_distribution is avoided: its output differs between
// standard libraries.
#pragma once

#include <cstdint>

namespace strata {

// SplitMix64 (Steele, Lea, Flood 2014): a fast 64-bit mixer and generator.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Combines stream identifiers into one seed: mix_seed(seed, epoch, index).
inline uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0) {
  return splitmix64(splitmix64(splitmix64(a) ^ b) ^ c);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    uint64_t x = state_;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }
  // Uniform in [0, n) without modulo bias (Lemire 2019). n > 0.
  uint64_t below(uint64_t n) {
    for (;;) {
      unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
      uint64_t low = static_cast<uint64_t>(m);
      if (low >= n || low >= (-n) % n) return static_cast<uint64_t>(m >> 64);
    }
  }

 private:
  uint64_t state_;
};

}  // namespace strata
