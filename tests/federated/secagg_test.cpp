// Secure aggregation (Note [Secure aggregation] in federated/secagg.h):
// Shamir sharing, quantisation, and whole rounds in one process -- the
// unmasked sum against the plain sum with no dropouts, with dropouts at
// every stage up to the threshold, a clean failure beyond it, a sparse
// (SecAgg+) neighbour graph, and the messages a misbehaving client or
// server sends refused with their reasons.
#include <gtest/gtest.h>

#include <memory>
#include <set>

#include "core/error.h"
#include "federated/secagg.h"
#include "federated/shamir.h"

namespace strata::fed::secagg {
namespace {

shamir::Secret random_secret(uint8_t salt) {
  shamir::Secret s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<uint8_t>(i * 37 + salt * 11 + 255);
  return s;
}

TEST(Shamir, FieldArithmetic) {
  using namespace shamir;
  EXPECT_EQ(add(kPrime - 1, 1), 0u);
  EXPECT_EQ(sub(0, 1), kPrime - 1);
  EXPECT_EQ(mul(kPrime - 1, kPrime - 1), 1u);  // (-1)^2
  EXPECT_EQ(mul(uint64_t{1} << 40, uint64_t{1} << 40), uint64_t{1} << 19);  // 2^80 = 2^19
  for (uint64_t a : {uint64_t{2}, uint64_t{12345}, kPrime - 2, (uint64_t{1} << 60) + 7}) {
    EXPECT_EQ(mul(a, inverse(a)), 1u) << a;
  }
}

TEST(Shamir, AnyThresholdSharesRebuildTheSecretAndFewerDoNot) {
  const shamir::Secret secret = random_secret(1);
  const std::vector<uint64_t> xs{3, 5, 6, 9, 10, 11, 12};
  const std::vector<shamir::Share> shares = shamir::split(secret, 4, xs);
  ASSERT_EQ(shares.size(), xs.size());
  // Every 4-subset of the 7 shares.
  int subsets = 0;
  for (int mask = 0; mask < 128; ++mask) {
    if (__builtin_popcount(mask) != 4) continue;
    std::vector<shamir::Share> pick;
    for (int i = 0; i < 7; ++i) {
      if (mask & (1 << i)) pick.push_back(shares[i]);
    }
    EXPECT_EQ(shamir::combine(pick), secret) << mask;
    ++subsets;
  }
  EXPECT_EQ(subsets, 35);
  EXPECT_EQ(shamir::combine(shares), secret);  // more than the threshold, consistent
  EXPECT_NE(shamir::combine({shares[0], shares[1], shares[2]}), secret);
  // Fresh randomness: the same secret is shared differently every time.
  EXPECT_NE(shamir::split(secret, 4, xs)[0].y, shares[0].y);
}

TEST(Quantise, IsUnbiasedWithinOneStepAndClipsToTheRange) {
  const at::Tensor x = at::linspace(-9.0, 9.0, 20001);
  const double step = 16.0 / ((1 << 22) - 1);
  at::Tensor mean = at::zeros({20001}, at::kDouble);
  for (int r = 0; r < 20; ++r) {
    const at::Tensor back = dequantise(quantise(x, 8.0, 22), 1, 8.0, 22).to(at::kDouble);
    EXPECT_LE((back - x.to(at::kDouble).clamp(-8, 8)).abs().max().item<double>(), step * 1.001);
    mean += back / 20;
  }
  // Unbiased: the mean of 20 draws is within 4 sigma (step / (2 sqrt(20))).
  const at::Tensor inside = x.abs() < 7.9;
  EXPECT_LT((mean - x.to(at::kDouble)).masked_select(inside).abs().mean().item<double>(),
            step / 4);
  EXPECT_NEAR(dequantise(quantise(at::full({1}, 100.0), 8.0, 22), 1, 8.0, 22).item<double>(),
              8.0, step);
}

// A round driven in one process: clients drop at the stage given.
struct Drops {
  std::set<int64_t> keys, shares, masked, reveal;
};

struct RoundRun {
  Unmasked result;
  at::Tensor plain;  // the sum of the survivors' vectors
  std::optional<std::string> failed_at;
};

RoundRun run_round(const Settings& s, int64_t n, const Drops& d, uint64_t seed = 7) {
  std::vector<std::string> ids;
  for (int64_t i = 0; i < n; ++i) ids.push_back("client-" + std::to_string(i));
  Round round(s, ids, seed);
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<at::Tensor> xs;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (int64_t i = 0; i < n; ++i) {
    clients.push_back(std::make_unique<Client>(s));
    xs.push_back(at::randn({s.values}, gen) * 0.1);
  }
  RoundRun out;
  const auto ok = [](const std::optional<Rejection>& r) {
    EXPECT_FALSE(r.has_value()) << (r ? r->reason : "");
  };
  for (int64_t i = 0; i < n; ++i) {
    if (!d.keys.count(i)) ok(round.advertise(ids[i], clients[i]->advertise()));
  }
  if (auto why = round.close_keys()) return out.failed_at = "keys: " + *why, out;
  for (const int64_t i : round.advertised()) {
    if (!d.shares.count(i)) ok(round.shares(ids[i], clients[i]->share(round.roster(i))));
  }
  if (auto why = round.close_shares()) return out.failed_at = "shares: " + *why, out;
  for (const int64_t i : round.shared()) {
    if (!d.masked.count(i)) ok(round.masked(ids[i], clients[i]->mask(xs[i], round.inbox(i))));
  }
  if (auto why = round.close_masked()) return out.failed_at = "masked: " + *why, out;
  for (const int64_t i : round.survived()) {
    if (!d.reveal.count(i)) ok(round.reveal(ids[i], clients[i]->reveal(round.fate(i))));
  }
  out.result = round.finish();
  out.plain = at::zeros({s.values});
  for (const int64_t i : out.result.survivors) out.plain += xs[i];
  return out;
}

Settings settings(int64_t values, int threshold, int neighbours = 0) {
  Settings s;
  s.values = values;
  s.threshold = threshold;
  s.neighbours = neighbours;
  return s;
}

void expect_sum(const RoundRun& r, int64_t survivors) {
  ASSERT_FALSE(r.failed_at) << *r.failed_at;
  ASSERT_TRUE(r.result.ok) << r.result.reason;
  EXPECT_EQ(static_cast<int64_t>(r.result.survivors.size()), survivors);
  // One quantisation step per client and element at most.
  const double step = 16.0 / ((1 << 22) - 1);
  EXPECT_LE((r.result.sum - r.plain).abs().max().item<double>(), step * survivors * 1.001);
}

TEST(SecAgg, TheUnmaskedSumIsThePlainSumWithoutDropouts) {
  expect_sum(run_round(settings(1000, 6), 10, {}), 10);
}

TEST(SecAgg, DropoutsAtEveryStageUpToTheThreshold) {
  // 12 clients, threshold 6: one drops before sending keys, one before its
  // shares, two after their shares (their pairwise masks are in others'
  // inputs: rebuilt from their keys' shares), one survivor does not reveal:
  // each survivor's seed then has exactly 6 holders that reveal.
  const RoundRun r = run_round(settings(500, 6), 12, {{0}, {1}, {2, 3}, {4}});
  expect_sum(r, 8);
  EXPECT_EQ(r.result.survivors, (std::vector<int64_t>{4, 5, 6, 7, 8, 9, 10, 11}));
}

TEST(SecAgg, TooManyDropoutsFailCleanly) {
  // 10 clients, threshold 6: five drop after sharing; each survivor's seed
  // has only 4 holders left.
  const RoundRun after_masking = run_round(settings(100, 6), 10, {{}, {}, {0, 1, 2, 3, 4}, {}});
  ASSERT_TRUE(after_masking.failed_at);
  EXPECT_NE(after_masking.failed_at->find("too many dropouts"), std::string::npos)
      << *after_masking.failed_at;
  // Survivors that do not reveal: found at the end, nothing unmasked.
  const RoundRun silent = run_round(settings(100, 6), 10, {{}, {}, {}, {0, 1, 2, 3, 4}});
  ASSERT_FALSE(silent.failed_at);
  EXPECT_FALSE(silent.result.ok);
  EXPECT_FALSE(silent.result.sum.defined());
  EXPECT_NE(silent.result.reason.find("needs 6 shares and only 5"), std::string::npos)
      << silent.result.reason;
  const RoundRun few = run_round(settings(100, 6), 10, {{0, 1, 2, 3}, {}, {}, {}});
  ASSERT_TRUE(few.failed_at);
  EXPECT_NE(few.failed_at->find("only 6 of 10 selected clients sent keys"), std::string::npos)
      << *few.failed_at;
}

TEST(SecAgg, ASparseNeighbourGraphSumsTheSame) {
  // SecAgg+: 40 clients, 8 neighbours each, threshold 5, 4 dropouts after
  // sharing spread over the ring.
  const Settings s = settings(300, 5, 8);
  const RoundRun r = run_round(s, 40, {{}, {}, {3, 14, 25, 36}, {}});
  expect_sum(r, 36);
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(std::to_string(i));
  Round round(s, ids, 1);
  for (int i = 0; i < 40; ++i) {
    Client c(s);
    ASSERT_FALSE(round.advertise(ids[i], c.advertise()));
  }
  ASSERT_FALSE(round.close_keys());
  EXPECT_EQ(round.neighbours_of_each(), 8);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(round.roster(i).neighbours.size(), 8u) << i;
}

// Clients a, b, c through the shares stage of a round, every one in.
struct Shared {
  Round round;
  std::vector<std::unique_ptr<Client>> c;
};
Shared three_shared(const Settings& s, uint64_t seed) {
  const std::vector<std::string> ids{"a", "b", "c"};
  Shared out{Round(s, ids, seed), {}};
  for (int i = 0; i < 3; ++i) {
    out.c.push_back(std::make_unique<Client>(s));
    EXPECT_FALSE(out.round.advertise(ids[i], out.c[i]->advertise()));
  }
  EXPECT_FALSE(out.round.close_keys());
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(out.round.shares(ids[i], out.c[i]->share(out.round.roster(i))));
  }
  EXPECT_FALSE(out.round.close_shares());
  return out;
}

TEST(SecAgg, AMaskedInputAloneLooksUniform) {
  Shared r = three_shared(settings(20000, 2), 3);
  Round& round = r.round;
  auto& c = r.c;
  // All-zero update: q(x) is the middle of the range, the masks make it
  // uniform over 2^32 (mean 2^31, std 2^32 / sqrt(12)).
  const std::vector<uint32_t> y = c[0]->mask(at::zeros({20000}), round.inbox(0));
  double mean = 0, sq = 0;
  for (uint32_t v : y) {
    mean += v / 20000.0;
    sq += static_cast<double>(v) * v / 20000.0;
  }
  EXPECT_NEAR(mean / 4294967296.0, 0.5, 0.01);
  EXPECT_NEAR(std::sqrt(sq - mean * mean) / 4294967296.0, 1 / std::sqrt(12.0), 0.01);
}

// A client that misbehaves is refused with a code and a reason, and the
// round goes on without what it sent.
TEST(SecAgg, MalformedMessagesAreRefusedWithReasons) {
  const Settings s = settings(50, 3);
  std::vector<std::string> ids{"a", "b", "c", "d", "e"};
  Round round(s, ids, 5);
  std::vector<std::unique_ptr<Client>> c;
  for (int i = 0; i < 5; ++i) c.push_back(std::make_unique<Client>(s));
  std::vector<KeysMsg> keys;
  for (int i = 0; i < 5; ++i) keys.push_back(c[i]->advertise());
  EXPECT_EQ(round.advertise("mallory", keys[0])->key, "not_selected");
  KeysMsg low{};  // all zeros: a low-order point
  const auto bad_key = round.advertise("a", low);
  ASSERT_TRUE(bad_key);
  EXPECT_EQ(bad_key->code, RejectCode::kInvalidArgument);
  EXPECT_NE(bad_key->reason.find("low-order"), std::string::npos);
  for (int i = 0; i < 5; ++i) ASSERT_FALSE(round.advertise(ids[i], keys[i]));
  EXPECT_EQ(round.advertise("a", keys[0])->code, RejectCode::kAlreadyExists);
  EXPECT_EQ(round.shares("a", SharesMsg{})->key, "secagg_stage");  // keys still open
  ASSERT_FALSE(round.close_keys());
  EXPECT_EQ(round.advertise("b", keys[1])->key, "secagg_stage");

  SharesMsg good = c[0]->share(round.roster(0));
  SharesMsg short_box = good;
  short_box.shares[0].box.pop_back();
  EXPECT_NE(round.shares("a", short_box)->reason.find("bytes, not 168"), std::string::npos);
  SharesMsg missing = good;
  missing.shares.pop_back();
  EXPECT_NE(round.shares("a", missing)->reason.find("3 sealed shares; this client has 4"),
            std::string::npos);
  SharesMsg self = good;
  self.shares[0].to = 0;
  EXPECT_NE(round.shares("a", self)->reason.find("not a neighbour"), std::string::npos);
  ASSERT_FALSE(round.shares("a", good));
  for (int i = 1; i < 5; ++i) ASSERT_FALSE(round.shares(ids[i], c[i]->share(round.roster(i))));
  ASSERT_FALSE(round.close_shares());

  std::vector<std::vector<uint32_t>> y;
  for (int i = 0; i < 5; ++i) y.push_back(c[i]->mask(at::ones({50}) * i, round.inbox(i)));
  std::vector<uint32_t> longer = y[0];
  longer.push_back(0);
  const auto wrong_length = round.masked("a", longer);
  ASSERT_TRUE(wrong_length);
  EXPECT_EQ(wrong_length->code, RejectCode::kInvalidArgument);
  EXPECT_EQ(wrong_length->reason, "the masked input has 51 values; the model has 50");
  for (int i = 0; i < 4; ++i) ASSERT_FALSE(round.masked(ids[i], y[i]));  // e drops
  ASSERT_FALSE(round.close_masked());
  EXPECT_EQ(round.masked("e", y[4])->key, "secagg_stage");

  // A bad share: b tampers with one value; refused, then its honest reveal taken.
  RevealMsg honest = c[1]->reveal(round.fate(1));
  RevealMsg forged = honest;
  forged.shares[0].y[0] ^= 1;
  const auto bad_share = round.reveal("b", forged);
  ASSERT_TRUE(bad_share);
  EXPECT_EQ(bad_share->key, "secagg_bad_share");
  EXPECT_NE(bad_share->reason.find("does not match the commitment"), std::string::npos);
  ASSERT_FALSE(round.reveal("b", honest));
  for (int i : {0, 2, 3}) ASSERT_FALSE(round.reveal(ids[i], c[i]->reveal(round.fate(i))));
  const Unmasked u = round.finish();
  ASSERT_TRUE(u.ok) << u.reason;
  EXPECT_NEAR(u.sum.mean().item<double>(), 0 + 1 + 2 + 3, 1e-4);
}

// The client's side refuses a server that asks for both secrets of one
// client, and shares that were tampered with on the way.
TEST(SecAgg, ClientsRefuseWhatWouldUnmaskAnIndividualUpdate) {
  Shared r = three_shared(settings(20, 2), 9);
  Round& round = r.round;
  auto& c = r.c;
  InboxMsg tampered = round.inbox(0);
  tampered.boxes[0].box[40] ^= 1;
  EXPECT_THROW(
      {
        try {
          c[0]->mask(at::zeros({20}), tampered);
        } catch (const DataError& e) {
          EXPECT_NE(std::string(e.what()).find("does not open"), std::string::npos) << e.what();
          throw;
        }
      },
      DataError);
  c[1]->mask(at::zeros({20}), round.inbox(1));
  UnmaskMsg both;
  both.survivors = {2};
  both.dropped = {2};
  try {
    c[1]->reveal(both);
    FAIL() << "a request for both secrets of client 2 was answered";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("asks for both secrets of client 2"), std::string::npos)
        << e.what();
  }
}

TEST(SecAgg, SettingsThatCannotWorkAreRecipeErrors) {
  const auto message = [](Settings s, int64_t n) -> std::string {
    try {
      check_settings(s, n);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(settings(10, 5), 5).find("threshold 5 must be in [2, 4]"), std::string::npos);
  EXPECT_NE(message(settings(10, 3, 3), 10).find("must be even"), std::string::npos);
  EXPECT_NE(message(settings(10, 3), 2000).find("can wrap around 2^32 (at most 1024 clients"),
            std::string::npos);
  EXPECT_EQ(message(settings(10, 3), 1024), "");
}

}  // namespace
}  // namespace strata::fed::secagg
