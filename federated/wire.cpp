#include "federated/wire.h"

#include <cstring>

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

std::string shape_str(const std::vector<int64_t>& s) {
  std::vector<std::string> parts;
  for (int64_t d : s) parts.push_back(std::to_string(d));
  return "[" + join(parts, ", ") + "]";
}

// `h` as an EncodedTensor without payload.
std::optional<WireError> read_header(const pb::TensorHeader& h, EncodedTensor* t) {
  const auto enc = from_proto(h.encoding());
  if (!enc) {
    return WireError{false, str("tensor ", quote(h.name()), " has unknown encoding ",
                                static_cast<int>(h.encoding()))};
  }
  t->name = h.name();
  t->shape.assign(h.shape().begin(), h.shape().end());
  t->encoding = *enc;
  t->scale = h.scale();
  t->k = h.k();
  t->data.clear();
  return std::nullopt;
}

WireError over_budget(uint64_t max_bytes) {
  return WireError{true, str("the update exceeds the server's limit of ", max_bytes >> 20,
                             " MiB (federated.server.max_message_mb)")};
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
    return WireError{false, str("tensor ", quote(t.name), " announced ", want_,
                                " payload bytes but ", t.data.size(), " arrived")};
  }
  return std::nullopt;
}

std::optional<WireError> TensorAssembler::header(const pb::TensorHeader& h) {
  if (auto e = close_current()) return e;
  if (tensors_.size() >= expected_) {
    return WireError{false, str("more than the announced ", expected_, " tensors")};
  }
  EncodedTensor t;
  if (auto e = read_header(h, &t)) return e;
  if (h.payload_bytes() > max_bytes_ - std::min(total_, max_bytes_)) return over_budget(max_bytes_);
  t.data.reserve(h.payload_bytes());
  want_ = h.payload_bytes();
  tensors_.push_back(std::move(t));
  return std::nullopt;
}

std::optional<WireError> TensorAssembler::data(const std::string& bytes) {
  if (tensors_.empty()) return WireError{false, "data before any tensor header"};
  EncodedTensor& t = tensors_.back();
  if (t.data.size() + bytes.size() > want_) {
    return WireError{false, str("tensor ", quote(t.name), " got more than its announced ",
                                want_, " payload bytes")};
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

std::optional<WireError> UpdateReceiver::header(const pb::TensorHeader& h) {
  if (auto e = close_current()) return e;
  const auto& slots = layout_.slots();
  if (received_ >= announced_) {
    return WireError{false, str("more than the announced ", announced_, " tensors")};
  }
  if (received_ >= slots.size()) {
    return WireError{false, str("the update has more tensors than the model's ", slots.size())};
  }
  if (auto e = read_header(h, &current_)) return e;
  const TensorSlot& s = slots[received_];
  if (current_.name != s.name) {
    return WireError{false, str("tensor ", received_, " is ", quote(current_.name),
                                "; the model's tensor ", received_, " is ", quote(s.name),
                                " (tensors come in GetModel's order)")};
  }
  if (current_.shape != s.shape) {
    return WireError{false, str("tensor ", quote(s.name), " has shape ",
                                printable(shape_str(current_.shape)), "; the model's is ",
                                shape_str(s.shape))};
  }
  if (h.payload_bytes() > max_bytes_ - std::min(total_, max_bytes_)) return over_budget(max_bytes_);
  // The payload size follows from the header: checked now, before any of
  // it is read or buffered.
  std::string why;
  const uint64_t expected = expected_payload_bytes(current_.encoding, s.numel, current_.k, &why);
  if (!why.empty()) {
    return WireError{false, str("tensor ", quote(s.name), " (", encoding_name(current_.encoding),
                                "): ", why)};
  }
  if (h.payload_bytes() != expected) {
    return WireError{false, str("tensor ", quote(s.name), " (", encoding_name(current_.encoding),
                                "): ", h.payload_bytes(), " payload bytes for ", s.numel,
                                " elements; expected ", expected)};
  }
  if (!flat_.defined()) flat_ = at::empty({layout_.numel()}, at::kFloat);
  if (current_.encoding != Encoding::kFp32) current_.data.reserve(h.payload_bytes());
  want_ = h.payload_bytes();
  got_ = 0;
  ++received_;
  open_ = true;
  return std::nullopt;
}

std::optional<WireError> UpdateReceiver::data(const std::string& bytes) {
  if (!open_) return WireError{false, "data before any tensor header"};
  if (got_ + bytes.size() > want_) {
    return WireError{false, str("tensor ", quote(current_.name), " got more than its announced ",
                                want_, " payload bytes")};
  }
  if (current_.encoding == Encoding::kFp32) {
    const TensorSlot& s = layout_.slots()[received_ - 1];
    char* dst = static_cast<char*>(flat_.data_ptr()) + s.offset * sizeof(float) + got_;
    std::memcpy(dst, bytes.data(), bytes.size());
  } else {
    current_.data += bytes;
  }
  got_ += bytes.size();
  total_ += bytes.size();
  return std::nullopt;
}

std::optional<WireError> UpdateReceiver::close_current() {
  if (!open_) return std::nullopt;
  open_ = false;
  if (got_ != want_) {
    return WireError{false, str("tensor ", quote(current_.name), " announced ", want_,
                                " payload bytes but ", got_, " arrived")};
  }
  if (current_.encoding != Encoding::kFp32) {
    const TensorSlot& s = layout_.slots()[received_ - 1];
    try {
      flat_.slice(0, s.offset, s.offset + s.numel).copy_(decode(current_).view({-1}));
    } catch (const DataError& e) {
      return WireError{false, e.what()};
    }
    std::string().swap(current_.data);
  }
  return std::nullopt;
}

std::optional<WireError> UpdateReceiver::finish() {
  if (auto e = close_current()) return e;
  if (received_ != announced_) {
    return WireError{false, str("announced ", announced_, " tensors, sent ", received_)};
  }
  if (received_ != layout_.slots().size()) {
    return WireError{false, str("the update has ", received_, " tensors; the model has ",
                                layout_.slots().size())};
  }
  if (!flat_.defined()) flat_ = at::empty({layout_.numel()}, at::kFloat);
  return std::nullopt;
}

}  // namespace strata::fed
