// Shamir secret sharing (Shamir 1979) of 32-byte secrets over the prime
// field GF(2^61 - 1), for secure aggregation (secagg.h): a secret is split
// into five limbs of 7 bytes (each below the prime), each limb the constant
// term of its own random polynomial of degree threshold - 1; a share is the
// five polynomials' values at the holder's point x >= 1. Any `threshold`
// shares give the secret back (Lagrange interpolation at 0); fewer say
// nothing about it (every secret is equally likely). Randomness from
// libsodium's randombytes (the OS's CSPRNG).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace strata::fed::shamir {

constexpr uint64_t kPrime = (uint64_t{1} << 61) - 1;
constexpr int kLimbs = 5;
using Secret = std::array<uint8_t, 32>;

struct Share {
  uint64_t x = 0;                  // the holder's point, in [1, kPrime)
  std::array<uint64_t, kLimbs> y{};  // each in [0, kPrime)
};

// Field arithmetic (exposed for tests).
uint64_t add(uint64_t a, uint64_t b);
uint64_t sub(uint64_t a, uint64_t b);
uint64_t mul(uint64_t a, uint64_t b);
uint64_t inverse(uint64_t a);  // a != 0

// One share per point in `xs` (distinct, in [1, kPrime)); threshold in
// [1, xs.size()].
std::vector<Share> split(const Secret& secret, int threshold, const std::vector<uint64_t>& xs);

// The secret from exactly the given shares (at least the threshold, with
// distinct points and limbs below the prime: the caller checks). With fewer
// than the threshold the result is a random-looking wrong secret, which is
// why callers check what they reconstruct against a commitment.
Secret combine(const std::vector<Share>& shares);

}  // namespace strata::fed::shamir
