#include "federated/wire.h"

#include "core/error.h"
#include "core/strings.h"

namespace strata::fed {
namespace {

pb::Encoding to_proto(Encoding e) {
  switch (e) {
    case Encoding::kFp32: return pb::FP32;
    case Encoding::kFp16: return pb::FP16;
    case Encoding::kInt8: return pb::INT8;
    case Encoding::kTopK: return pb::TOPK;
  }
  return pb::ENCODING_UNSPECIFIED;
}

std::optional<Encoding> from_proto(pb::Encoding e) {
  switch (e) {
    case pb::FP32: return Encoding::kFp32;
    case pb::FP16: return Encoding::kFp16;
    case pb::INT8: return Encoding::kInt8;
    case pb::TOPK: return Encoding::kTopK;
    default: return std::nullopt;
  }
}

}  // namespace

void to_proto(const EncodedTensor& e, pb::TensorHeader* h) {
  h->set_name(e.name);
  for (int64_t d : e.shape) h->add_shape(d);
  h->set_encoding(to_proto(e.encoding));
  h->set_scale(e.scale);
  h->set_k(e.k);
  h->set_payload_bytes(e.data.size());
}

std::optional<WireError> TensorAssembler::close_current() {
  if (tensors_.empty()) return std::nullopt;
  const EncodedTensor& t = tensors_.back();
  if (t.data.size() != want_) {
    return WireError{false, str("tensor '", t.name, "' announced ", want_,
                                " payload bytes but ", t.data.size(), " arrived")};
  }
  return std::nullopt;
}

std::optional<WireError> TensorAssembler::header(const pb::TensorHeader& h) {
  if (auto e = close_current()) return e;
  if (tensors_.size() >= expected_) {
    return WireError{false, str("more than the announced ", expected_, " tensors")};
  }
  const auto enc = from_proto(h.encoding());
  if (!enc) {
    return WireError{false, str("tensor '", h.name(), "' has unknown encoding ",
                                static_cast<int>(h.encoding()))};
  }
  if (h.payload_bytes() > max_bytes_ - std::min(total_, max_bytes_)) {
    return WireError{true, str("the update exceeds the server's limit of ", max_bytes_ >> 20,
                               " MiB (federated.server.max_message_mb)")};
  }
  EncodedTensor t;
  t.name = h.name();
  t.shape.assign(h.shape().begin(), h.shape().end());
  t.encoding = *enc;
  t.scale = h.scale();
  t.k = h.k();
  t.data.reserve(h.payload_bytes());
  want_ = h.payload_bytes();
  tensors_.push_back(std::move(t));
  return std::nullopt;
}

std::optional<WireError> TensorAssembler::data(const std::string& bytes) {
  if (tensors_.empty()) return WireError{false, "data before any tensor header"};
  EncodedTensor& t = tensors_.back();
  if (t.data.size() + bytes.size() > want_) {
    return WireError{false, str("tensor '", t.name, "' got more than its announced ", want_,
                                " payload bytes")};
  }
  total_ += bytes.size();
  t.data += bytes;
  return std::nullopt;
}

std::optional<WireError> TensorAssembler::finish() {
  if (auto e = close_current()) return e;
  if (tensors_.size() != expected_) {
    return WireError{false, str("announced ", expected_, " tensors, sent ", tensors_.size())};
  }
  return std::nullopt;
}

}  // namespace strata::fed
