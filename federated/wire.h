// EncodedTensor <-> the protocol's TensorHeader + data chunks, for both
// sides of a stream (the server sends the model and receives updates, a
// client the reverse).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "federated/codec.h"
#include "strata_fed.pb.h"

namespace strata::fed {

namespace pb = ::strata::fed::v1;

// Largest data chunk a sender writes (messages stay far below gRPC limits).
constexpr size_t kChunkBytes = size_t{1} << 20;

void to_proto(const EncodedTensor& e, pb::TensorHeader* h);

// Writes a header chunk then the payload in chunks of kChunkBytes. Chunk is
// pb::ModelChunk or pb::UpdateChunk; returns false when the stream broke.
template <class Chunk, class Writer>
bool write_encoded(const EncodedTensor& e, Writer* w) {
  Chunk head;
  to_proto(e, head.mutable_tensor());
  if (!w->Write(head)) return false;
  for (size_t off = 0; off < e.data.size(); off += kChunkBytes) {
    Chunk c;
    c.set_data(e.data.substr(off, kChunkBytes));
    if (!w->Write(c)) return false;
  }
  return true;
}

struct WireError {
  bool too_large = false;
  std::string reason;
};

// Rebuilds EncodedTensors from header and data chunks, checking order,
// declared sizes, the tensor count and a byte budget as they arrive.
class TensorAssembler {
 public:
  TensorAssembler(uint32_t expected_tensors, uint64_t max_bytes)
      : expected_(expected_tensors), max_bytes_(max_bytes) {}

  template <class Chunk>
  std::optional<WireError> add(const Chunk& c) {
    if (c.has_tensor()) return header(c.tensor());
    if (c.part_case() == Chunk::kData) return data(c.data());
    return WireError{false, "a chunk after the first carries neither a tensor header nor data"};
  }
  // After the last chunk: every tensor complete and as many as announced.
  std::optional<WireError> finish();
  std::vector<EncodedTensor>& tensors() { return tensors_; }

 private:
  std::optional<WireError> header(const pb::TensorHeader& h);
  std::optional<WireError> data(const std::string& bytes);
  std::optional<WireError> close_current();

  uint32_t expected_;
  uint64_t max_bytes_;
  uint64_t total_ = 0;
  uint64_t want_ = 0;  // payload bytes of the current tensor
  std::vector<EncodedTensor> tensors_;
};

}  // namespace strata::fed
