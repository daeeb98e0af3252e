#include "federated/shamir.h"

#include <sodium.h>

#include "core/error.h"

namespace strata::fed::shamir {
namespace {

constexpr int kLimbBytes = 7;

uint64_t random_element() {
  for (;;) {
    uint64_t v = 0;
    randombytes_buf(&v, sizeof v);
    v &= kPrime;  // 61 low bits
    if (v < kPrime) return v;
  }
}

std::array<uint64_t, kLimbs> limbs(const Secret& s) {
  std::array<uint64_t, kLimbs> out{};
  for (size_t i = 0; i < s.size(); ++i) {
    out[i / kLimbBytes] |= uint64_t{s[i]} << (8 * (i % kLimbBytes));
  }
  return out;
}

}  // namespace

uint64_t add(uint64_t a, uint64_t b) {
  const uint64_t s = a + b;  // < 2^62: no overflow
  return s >= kPrime ? s - kPrime : s;
}

uint64_t sub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kPrime - b; }

uint64_t mul(uint64_t a, uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  // 2^61 = 1 (mod p): fold the high bits onto the low ones.
  const uint64_t lo = static_cast<uint64_t>(p) & kPrime;
  const uint64_t hi = static_cast<uint64_t>(p >> 61);
  return add(lo, hi % kPrime);
}

uint64_t inverse(uint64_t a) {
  STRATA_INTERNAL_ASSERT(a % kPrime != 0);
  // Fermat: a^(p - 2).
  uint64_t result = 1, base = a % kPrime, e = kPrime - 2;
  while (e > 0) {
    if (e & 1) result = mul(result, base);
    base = mul(base, base);
    e >>= 1;
  }
  return result;
}

std::vector<Share> split(const Secret& secret, int threshold, const std::vector<uint64_t>& xs) {
  STRATA_INTERNAL_ASSERT(threshold >= 1 && static_cast<size_t>(threshold) <= xs.size());
  const std::array<uint64_t, kLimbs> c0 = limbs(secret);
  std::vector<Share> out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    STRATA_INTERNAL_ASSERT(xs[i] >= 1 && xs[i] < kPrime);
    out[i].x = xs[i];
  }
  std::vector<uint64_t> coef(static_cast<size_t>(threshold));
  for (int l = 0; l < kLimbs; ++l) {
    coef[0] = c0[l];
    for (int k = 1; k < threshold; ++k) coef[k] = random_element();
    for (Share& s : out) {
      uint64_t y = 0;  // Horner
      for (int k = threshold - 1; k >= 0; --k) y = add(mul(y, s.x), coef[k]);
      s.y[l] = y;
    }
  }
  sodium_memzero(coef.data(), coef.size() * sizeof(uint64_t));
  return out;
}

Secret combine(const std::vector<Share>& shares) {
  STRATA_INTERNAL_ASSERT(!shares.empty());
  std::array<uint64_t, kLimbs> c0{};
  for (size_t i = 0; i < shares.size(); ++i) {
    // Lagrange basis at 0: prod_j x_j / (x_j - x_i).
    uint64_t num = 1, den = 1;
    for (size_t j = 0; j < shares.size(); ++j) {
      if (j == i) continue;
      num = mul(num, shares[j].x);
      den = mul(den, sub(shares[j].x, shares[i].x));
    }
    const uint64_t w = mul(num, inverse(den));
    for (int l = 0; l < kLimbs; ++l) c0[l] = add(c0[l], mul(w, shares[i].y[l]));
  }
  Secret s{};
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = static_cast<uint8_t>(c0[i / kLimbBytes] >> (8 * (i % kLimbBytes)));
  }
  return s;
}

}  // namespace strata::fed::shamir
