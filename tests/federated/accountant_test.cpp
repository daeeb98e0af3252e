// The privacy accountant (federated/accountant.h): RDP of the sampled
// Gaussian mechanism against a closed form, and epsilon against Opacus'
// and dp-accounting's accountants on the committed vectors
// (tests/data/dp_vectors.json, written by tests/data/dp_vectors.py); the
// planning answer against Opacus' get_noise_multiplier; strata-fedserver
// privacy as a user runs it.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "federated/accountant.h"
#include "test_util.h"

namespace strata::fed {
namespace {

nlohmann::json vectors() {
  const std::string path = std::string(STRATA_SOURCE_DIR) + "/tests/data/dp_vectors.json";
  return parse_json_object(read_file(path), path);
}

double relative(double a, double b) { return std::abs(a - b) / std::abs(b); }

TEST(Accountant, OrderTwoIsTheClosedForm) {
  // A_2 = (1-q)^2 + 2q(1-q) + q^2 e^(1/z^2) = 1 + q^2 (e^(1/z^2) - 1).
  for (const double q : {0.01, 0.1, 0.5}) {
    for (const double z : {0.7, 1.0, 3.0}) {
      EXPECT_NEAR(sampled_gaussian_rdp(q, z, 2), std::log1p(q * q * std::expm1(1 / (z * z))),
                  1e-12)
          << q << " " << z;
    }
  }
  // Without sampling: the Gaussian mechanism's a / (2 z^2); no noise: no bound.
  EXPECT_DOUBLE_EQ(sampled_gaussian_rdp(1.0, 2.0, 5.5), 5.5 / 8);
  EXPECT_EQ(sampled_gaussian_rdp(0.0, 1.0, 8), 0.0);
  EXPECT_TRUE(std::isinf(sampled_gaussian_rdp(0.1, 0.0, 8)));
}

TEST(Accountant, FractionalOrdersLieBetweenTheirIntegerNeighbours) {
  // RDP is non-decreasing in the order.
  for (const double z : {0.5, 1.0, 2.0}) {
    double last = 0;
    for (double a = 1.1; a < 12; a += 0.1) {
      const double r = sampled_gaussian_rdp(0.05, z, a);
      EXPECT_GE(r, last * (1 - 1e-9)) << "z " << z << " order " << a;
      last = r;
    }
  }
}

TEST(Accountant, EpsilonAgreesWithOpacusAndDpAccountingToOnePercent) {
  const nlohmann::json j = vectors();
  ASSERT_GE(j["vectors"].size(), 10u);
  double worst = 0;
  for (const auto& v : j["vectors"]) {
    RdpAccountant acc;
    acc.compose(v["q"].get<double>(), v["z"].get<double>(), v["steps"].get<int64_t>());
    const double eps = acc.spent(v["delta"].get<double>()).epsilon;
    const std::string what = v.dump();
    EXPECT_LE(relative(eps, v["opacus_epsilon"].get<double>()), 0.01) << eps << " " << what;
    EXPECT_LE(relative(eps, v["dp_accounting_epsilon"].get<double>()), 0.01) << eps << " " << what;
    worst = std::max({worst, relative(eps, v["opacus_epsilon"].get<double>()),
                      relative(eps, v["dp_accounting_epsilon"].get<double>())});
  }
  std::printf("largest relative difference from a reference: %.2e\n", worst);
}

TEST(Accountant, ComposingRoundByRoundEqualsComposingAtOnce) {
  RdpAccountant once, each;
  once.compose(0.1, 1.1, 50);
  for (int i = 0; i < 50; ++i) each.compose(0.1, 1.1);
  EXPECT_NEAR(once.spent(1e-5).epsilon, each.spent(1e-5).epsilon, 1e-9);
  RdpAccountant before;
  before.compose(0.1, 1.1, 49);
  EXPECT_NEAR(before.spent_after(0.1, 1.1, 1, 1e-5).epsilon, once.spent(1e-5).epsilon, 1e-9);
  RdpAccountant restored;
  restored.restore(once.rdp());
  EXPECT_EQ(restored.spent(1e-5).epsilon, once.spent(1e-5).epsilon);
  EXPECT_THROW(restored.restore({1.0, 2.0}), DataError);
}

TEST(Accountant, PlannedNoiseMultiplierMatchesOpacus) {
  const nlohmann::json j = vectors();
  ASSERT_GE(j["plans"].size(), 4u);
  for (const auto& p : j["plans"]) {
    const double target = p["target_epsilon"].get<double>(), delta = p["delta"].get<double>();
    const double q = p["q"].get<double>();
    const int64_t steps = p["steps"].get<int64_t>();
    const double z = noise_multiplier_for(target, delta, q, steps);
    EXPECT_LE(relative(z, p["opacus_noise_multiplier"].get<double>()), 0.01) << z << " " << p.dump();
    RdpAccountant a;
    a.compose(q, z, steps);
    EXPECT_LE(a.spent(delta).epsilon, target);  // the plan keeps the budget
    RdpAccountant less;
    less.compose(q, z * 0.99, steps);
    EXPECT_GT(less.spent(delta).epsilon, target);  // and is the least noise that does
  }
}

std::string run(const std::string& args, int* rc) {
  std::string out;
  FILE* p = popen((std::string(STRATA_FEDSERVER_BIN) + " " + args + " 2>&1").c_str(), "r");
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  *rc = WEXITSTATUS(pclose(p));
  return out;
}

TEST(Accountant, FedserverPrivacyPlansAndSpends) {
  int rc = 0;
  std::string out = run("privacy --rate 0.04 --rounds 2250 --delta 1e-5 --noise 1.5", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("epsilon 7.3"), std::string::npos) << out;  // Opacus: 7.329
  out = run("privacy --rate 0.04 --rounds 2250 --delta 1e-5 --epsilon 8", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("noise multiplier 1.41"), std::string::npos) << out;  // Opacus: 1.4159
  out = run("privacy --rate 0.04 --rounds 10 --delta 1e-5", &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("--noise or --epsilon"), std::string::npos) << out;
  out = run("privacy --rate 1.5 --rounds 10 --delta 1e-5 --noise 1", &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("--rate"), std::string::npos) << out;
}

}  // namespace
}  // namespace strata::fed
