// EncodedTensor <-> the protocol's TensorHeader + data chunks, for both
// sides of a stream (the server sends the model and receives updates, a
// client the reverse), and the server's receiver that puts an update's
// chunks straight into its flat vector.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "federated/codec.h"
#include "federated/layout.h"
#include "strata_fed.pb.h"

namespace strata::fed {

namespace pb = ::strata::fed::v1;

// Trailing metadata of an UNAVAILABLE reply from a busy server: how many
// milliseconds to wait at least before retrying (strata_fed.proto).
constexpr char kRetryAfterKey[] = "retry-after-ms";
constexpr int kBusyRetryAfterMs = 100;  // what the server suggests

// Largest data chunk a sender writes (messages stay far below gRPC limits).
constexpr size_t kChunkBytes = size_t{1} << 20;
// Largest message either side accepts: 3 MiB (a data chunk of kChunkBytes
// leaves room for a client that writes chunks twice as large). A longer
// message fails with RESOURCE_EXHAUSTED. ClientConfig.max_chunk_bytes.
constexpr size_t kMaxChunkBytes = 2 * kChunkBytes + (size_t{1} << 20);

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

// What reads the tensor part of a stream: every chunk after the first is a
// tensor header or a piece of the current tensor's payload. Chunk is
// pb::ModelChunk or pb::UpdateChunk.
class ChunkReader {
 public:
  virtual ~ChunkReader() = default;
  template <class Chunk>
  std::optional<WireError> add(const Chunk& c) {
    if (c.has_tensor()) return header(c.tensor());
    if (c.part_case() == Chunk::kData) return data(c.data());
    return WireError{false, "a chunk after the first carries neither a tensor header nor data"};
  }
  // After the last chunk: every tensor complete and as many as announced.
  virtual std::optional<WireError> finish() = 0;

 protected:
  virtual std::optional<WireError> header(const pb::TensorHeader& h) = 0;
  virtual std::optional<WireError> data(const std::string& bytes) = 0;
};

// Rebuilds EncodedTensors from header and data chunks, checking order,
// declared sizes, the tensor count and a byte budget as they arrive.
class TensorAssembler final : public ChunkReader {
 public:
  TensorAssembler(uint32_t expected_tensors, uint64_t max_bytes)
      : expected_(expected_tensors), max_bytes_(max_bytes) {}

  std::optional<WireError> finish() override;
  std::vector<EncodedTensor>& tensors() { return tensors_; }

 private:
  std::optional<WireError> header(const pb::TensorHeader& h) override;
  std::optional<WireError> data(const std::string& bytes) override;
  std::optional<WireError> close_current();

  uint32_t expected_;
  uint64_t max_bytes_;
  uint64_t total_ = 0;
  uint64_t want_ = 0;  // payload bytes of the current tensor
  std::vector<EncodedTensor> tensors_;
};

// Receives an update's chunks straight into one flat float32 vector laid
// out as `layout` (Note [Bounded ingest] in service_impl.h). Each header is
// checked against the model as it arrives (order, name, shape, payload
// size), so a wrong update is refused at its first wrong header, before its
// data is read. fp32 payloads are copied from the chunk into place; the
// compressed encodings are kept one tensor at a time and decoded into place
// (by codec.h's decode, which checks them) once the tensor is complete. An
// update in flight costs its flat vector plus at most one compressed tensor.
class UpdateReceiver final : public ChunkReader {
 public:
  UpdateReceiver(const TensorLayout& layout, uint32_t announced_tensors, uint64_t max_bytes)
      : layout_(layout), announced_(announced_tensors), max_bytes_(max_bytes) {}

  // Also: every tensor of the model arrived.
  std::optional<WireError> finish() override;
  // The update as one flat float32 vector (after finish() returned nothing).
  at::Tensor take() { return std::move(flat_); }

 private:
  std::optional<WireError> header(const pb::TensorHeader& h) override;
  std::optional<WireError> data(const std::string& bytes) override;
  std::optional<WireError> close_current();

  const TensorLayout& layout_;
  uint32_t announced_;
  uint64_t max_bytes_;
  uint64_t total_ = 0;   // payload bytes so far
  at::Tensor flat_;      // allocated at the first header
  size_t received_ = 0;  // tensors whose header arrived
  bool open_ = false;    // the last of them still takes data
  EncodedTensor current_;  // its header; its payload unless fp32
  uint64_t want_ = 0, got_ = 0;
};

}  // namespace strata::fed
