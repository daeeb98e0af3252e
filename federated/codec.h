// Tensors on the wire: raw little-endian bytes plus name, dtype and shape,
// never a pickled or otherwise executable payload.
//
// Encodings (what an edge client may send; the server decodes to float32):
//   fp32   4 bytes per element, exact
//   fp16   2 bytes per element (IEEE half), relative error <= 2^-11
//   int8   1 byte per element, symmetric per-tensor quantisation:
//          value = q * scale, q in [-127, 127], scale = max|x| / 127
//   topk   the k largest-magnitude elements: k int32 flat indices
//          (strictly increasing) then k float32 values; the rest are zero
//
// decode() trusts nothing: sizes, indices, scale and shape are checked and
// a violation is a DataError that says what is wrong, so a server can reject
// the update with that reason.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace strata::fed {

enum class Encoding { kFp32, kFp16, kInt8, kTopK };

const char* encoding_name(Encoding e);
// "fp32" | "fp16" | "int8" | "topk"; ConfigError naming the valid ones.
Encoding parse_encoding(const std::string& name);

struct EncodedTensor {
  std::string name;
  std::vector<int64_t> shape;
  Encoding encoding = Encoding::kFp32;
  float scale = 0.0f;   // int8 only
  uint64_t k = 0;       // topk only: entries kept
  std::string data;     // the payload bytes (layout above)

  int64_t numel() const;
};

struct EncodeOptions {
  Encoding encoding = Encoding::kFp32;
  double topk_fraction = 0.01;  // topk: share of elements kept (>= 1 kept)
};

// `t` is any floating tensor (converted to float32 first).
EncodedTensor encode(const std::string& name, const at::Tensor& t,
                     const EncodeOptions& options);
// A float32 tensor of the recorded shape.
at::Tensor decode(const EncodedTensor& e);

// Bytes `e` occupies on the wire for its payload.
inline size_t payload_bytes(const EncodedTensor& e) { return e.data.size(); }

// The payload size a tensor of `numel` elements has in `encoding` (topk:
// with `k` entries), or 0 with `why` set when no payload can be right (k
// above numel). Lets a receiver refuse a header that announces the wrong
// size before reading any of its payload.
uint64_t expected_payload_bytes(Encoding encoding, int64_t numel, uint64_t k, std::string* why);

// Limits for shapes a peer sends (a model has at most this many elements
// per tensor); beyond them decode() refuses before allocating.
constexpr int64_t kMaxTensorElements = int64_t{1} << 31;
constexpr size_t kMaxTensorDims = 8;

}  // namespace strata::fed
