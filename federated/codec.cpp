#include "federated/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/strings.h"

namespace strata::fed {
namespace {

static_assert(sizeof(float) == 4, "float32 payloads");

// Little-endian hosts only (x86-64, aarch64): payloads are memcpy'd.
bool little_endian() {
  const uint16_t one = 1;
  uint8_t first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

std::string bytes_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::string out(static_cast<size_t>(c.numel() * c.element_size()), '\0');
  if (!out.empty()) std::memcpy(out.data(), c.data_ptr(), out.size());
  return out;
}

at::Tensor from_bytes(const std::string& data, at::ScalarType dtype,
                      int64_t numel) {
  at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(dtype));
  if (!data.empty()) std::memcpy(t.data_ptr(), data.data(), data.size());
  return t;
}

[[noreturn]] void bad(const EncodedTensor& e, const std::string& what) {
  throw DataError(str("tensor ", quote(e.name), " (", encoding_name(e.encoding),
                      "): ", what));
}

}  // namespace

const char* encoding_name(Encoding e) {
  switch (e) {
    case Encoding::kFp32: return "fp32";
    case Encoding::kFp16: return "fp16";
    case Encoding::kInt8: return "int8";
    case Encoding::kTopK: return "topk";
  }
  return "?";
}

Encoding parse_encoding(const std::string& name) {
  for (Encoding e : {Encoding::kFp32, Encoding::kFp16, Encoding::kInt8, Encoding::kTopK}) {
    if (name == encoding_name(e)) return e;
  }
  throw ConfigError(str("unknown update encoding '", name,
                        "'; valid: fp32, fp16, int8, topk"));
}

int64_t EncodedTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

EncodedTensor encode(const std::string& name, const at::Tensor& t,
                     const EncodeOptions& o) {
  STRATA_INTERNAL_ASSERT(little_endian(), "tensor payloads assume a little-endian host");
  STRATA_CHECK_T(ConfigError, t.is_floating_point(), "tensor '", name,
                 "' is ", t.scalar_type(), "; updates carry floating tensors");
  EncodedTensor e;
  e.name = name;
  e.shape = t.sizes().vec();
  e.encoding = o.encoding;
  const at::Tensor flat = t.detach().to(at::kCPU, at::kFloat).contiguous().view({-1});
  switch (o.encoding) {
    case Encoding::kFp32:
      e.data = bytes_of(flat);
      break;
    case Encoding::kFp16:
      e.data = bytes_of(flat.to(at::kHalf));
      break;
    case Encoding::kInt8: {
      const double max_abs = flat.numel() ? flat.abs().max().item<double>() : 0.0;
      e.scale = max_abs > 0 ? static_cast<float>(max_abs / 127.0) : 1.0f;
      e.data = bytes_of(flat.div(e.scale).round_().clamp_(-127, 127).to(at::kChar));
      break;
    }
    case Encoding::kTopK: {
      STRATA_CHECK_T(ConfigError, o.topk_fraction > 0 && o.topk_fraction <= 1,
                     "topk fraction ", o.topk_fraction, " is outside (0, 1]");
      const int64_t n = flat.numel();
      const int64_t k = n == 0 ? 0 : std::max<int64_t>(
          1, static_cast<int64_t>(std::ceil(o.topk_fraction * static_cast<double>(n))));
      at::Tensor idx = std::get<1>(flat.abs().topk(k, 0, true, false));
      idx = std::get<0>(idx.sort());
      e.k = static_cast<uint64_t>(k);
      e.data = bytes_of(idx.to(at::kInt)) + bytes_of(flat.index_select(0, idx));
      break;
    }
  }
  return e;
}

uint64_t expected_payload_bytes(Encoding encoding, int64_t numel, uint64_t k, std::string* why) {
  const auto n = static_cast<uint64_t>(std::max<int64_t>(0, numel));
  switch (encoding) {
    case Encoding::kFp32: return n * 4;
    case Encoding::kFp16: return n * 2;
    case Encoding::kInt8: return n;
    case Encoding::kTopK:
      if (k > n) {
        *why = str("k = ", k, " exceeds the ", n, " elements");
        return 0;
      }
      return k * 8;
  }
  return 0;
}

at::Tensor decode(const EncodedTensor& e) {
  STRATA_INTERNAL_ASSERT(little_endian(), "tensor payloads assume a little-endian host");
  if (e.shape.size() > kMaxTensorDims) bad(e, str(e.shape.size(), " dimensions (at most ", kMaxTensorDims, ")"));
  int64_t n = 1;
  for (int64_t d : e.shape) {
    if (d < 0) bad(e, str("negative dimension ", d));
    if (d > 0 && n > kMaxTensorElements / d) bad(e, "shape has too many elements");
    n *= d;
  }
  const auto expect_bytes = [&](uint64_t want) {
    if (e.data.size() != want) {
      bad(e, str(e.data.size(), " payload bytes for ", n, " elements; expected ", want));
    }
  };
  at::Tensor flat;
  switch (e.encoding) {
    case Encoding::kFp32:
      expect_bytes(static_cast<uint64_t>(n) * 4);
      flat = from_bytes(e.data, at::kFloat, n);
      break;
    case Encoding::kFp16:
      expect_bytes(static_cast<uint64_t>(n) * 2);
      flat = from_bytes(e.data, at::kHalf, n).to(at::kFloat);
      break;
    case Encoding::kInt8:
      if (!std::isfinite(e.scale) || e.scale <= 0) bad(e, str("scale ", e.scale, " is not a positive finite number"));
      expect_bytes(static_cast<uint64_t>(n));
      flat = from_bytes(e.data, at::kChar, n).to(at::kFloat).mul_(e.scale);
      break;
    case Encoding::kTopK: {
      if (e.k > static_cast<uint64_t>(n)) bad(e, str("k = ", e.k, " exceeds the ", n, " elements"));
      expect_bytes(e.k * 8);
      const int64_t k = static_cast<int64_t>(e.k);
      at::Tensor idx = from_bytes(e.data.substr(0, e.k * 4), at::kInt, k).to(at::kLong);
      at::Tensor val = from_bytes(e.data.substr(e.k * 4), at::kFloat, k);
      if (k > 0) {
        const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
        if (lo < 0 || hi >= n) bad(e, str("index out of range [0, ", n, ")"));
        if (k > 1 && !(idx.slice(0, 1) > idx.slice(0, 0, k - 1)).all().item<bool>()) {
          bad(e, "indices are not strictly increasing");
        }
      }
      flat = at::zeros({n}, at::kFloat);
      flat.index_put_({idx}, val);
      break;
    }
  }
  return flat.view(e.shape);
}

}  // namespace strata::fed
