// Tensor codec: round trips per encoding and every malformed payload.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "federated/codec.h"

namespace strata::fed {
namespace {

at::Tensor sample(int64_t n = 1000) {
  at::manual_seed(7);
  return at::randn({n / 10, 10});
}

TEST(Codec, Fp32RoundTripIsExact) {
  at::Tensor t = sample();
  EncodedTensor e = encode("w", t, {Encoding::kFp32});
  EXPECT_EQ(e.shape, (std::vector<int64_t>{100, 10}));
  EXPECT_EQ(payload_bytes(e), 4000u);
  EXPECT_TRUE(at::equal(decode(e), t));
}

TEST(Codec, Fp16RoundTripWithinHalfPrecision) {
  at::Tensor t = sample();
  EncodedTensor e = encode("w", t, {Encoding::kFp16});
  EXPECT_EQ(payload_bytes(e), 2000u);
  at::Tensor d = decode(e);
  EXPECT_EQ(d.scalar_type(), at::kFloat);
  EXPECT_LE(((d - t).abs() / t.abs()).max().item<double>(), std::ldexp(1.0, -11));
}

TEST(Codec, Int8ErrorAtMostHalfAStep) {
  at::Tensor t = sample();
  EncodedTensor e = encode("w", t, {Encoding::kInt8});
  EXPECT_EQ(payload_bytes(e), 1000u);
  EXPECT_FLOAT_EQ(e.scale, t.abs().max().item<float>() / 127);
  at::Tensor d = decode(e);
  EXPECT_LE((d - t).abs().max().item<double>(), e.scale / 2 * (1 + 1e-5));
  // The extreme element is represented exactly (q = +-127).
  const int64_t i = t.abs().argmax().item<int64_t>();
  EXPECT_NEAR(d.view({-1})[i].item<double>(), t.view({-1})[i].item<double>(), 1e-6);
}

TEST(Codec, Int8OfZerosDecodesToZeros) {
  EncodedTensor e = encode("b", at::zeros({4}), {Encoding::kInt8});
  EXPECT_TRUE(at::equal(decode(e), at::zeros({4})));
}

TEST(Codec, TopKKeepsTheLargestMagnitudes) {
  at::Tensor t = at::tensor({0.1f, -5.0f, 0.2f, 3.0f, -0.3f, 0.0f, 4.0f, 0.05f}).view({2, 4});
  EncodeOptions o{Encoding::kTopK, 0.3};  // ceil(0.3 * 8) = 3
  EncodedTensor e = encode("w", t, o);
  EXPECT_EQ(e.k, 3u);
  EXPECT_EQ(payload_bytes(e), 24u);
  at::Tensor expected = at::tensor({0.0f, -5.0f, 0.0f, 3.0f, 0.0f, 0.0f, 4.0f, 0.0f}).view({2, 4});
  EXPECT_TRUE(at::equal(decode(e), expected));
}

TEST(Codec, TopKKeepsAtLeastOne) {
  EncodedTensor e = encode("w", at::tensor({1.0f, 2.0f}), {Encoding::kTopK, 1e-9});
  EXPECT_EQ(e.k, 1u);
  EXPECT_TRUE(at::equal(decode(e), at::tensor({0.0f, 2.0f})));
}

TEST(Codec, ParseEncodingNamesTheValidOnes) {
  EXPECT_EQ(parse_encoding("int8"), Encoding::kInt8);
  try {
    parse_encoding("int4");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("valid: fp32, fp16, int8, topk"), std::string::npos);
  }
}

void expect_rejected(const EncodedTensor& e, const std::string& reason) {
  try {
    decode(e);
    ADD_FAILURE() << "decoded a malformed tensor; expected: " << reason;
  } catch (const DataError& err) {
    EXPECT_NE(std::string(err.what()).find(reason), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("tensor 'w'"), std::string::npos) << err.what();
  }
}

TEST(Codec, MalformedPayloadsAreRejectedWithTheReason) {
  const EncodedTensor good = encode("w", sample(), {Encoding::kFp32});
  EncodedTensor e = good;
  e.data.pop_back();
  expect_rejected(e, "3999 payload bytes for 1000 elements; expected 4000");
  e = good;
  e.shape = {-1, 10};
  expect_rejected(e, "negative dimension -1");
  e = good;
  e.shape = std::vector<int64_t>(9, 1);
  expect_rejected(e, "9 dimensions (at most 8)");
  e = good;
  e.shape = {int64_t{1} << 40, int64_t{1} << 40};
  expect_rejected(e, "too many elements");

  EncodedTensor q = encode("w", sample(), {Encoding::kInt8});
  q.scale = 0;
  expect_rejected(q, "scale 0 is not a positive finite number");
  q.scale = NAN;
  expect_rejected(q, "is not a positive finite number");

  const EncodedTensor k = encode("w", at::arange(10, at::kFloat), {Encoding::kTopK, 0.3});
  EncodedTensor bad = k;
  bad.k = 11;
  expect_rejected(bad, "k = 11 exceeds the 10 elements");
  bad = k;
  int32_t idx = 10;  // first index out of range
  std::memcpy(bad.data.data(), &idx, 4);
  expect_rejected(bad, "index out of range [0, 10)");
  bad = k;
  std::memcpy(bad.data.data(), bad.data.data() + 4, 4);  // repeat index
  expect_rejected(bad, "not strictly increasing");
}

}  // namespace
}  // namespace strata::fed
