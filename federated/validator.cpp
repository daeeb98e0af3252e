#include "federated/validator.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/strings.h"

namespace strata::fed {

const char* reject_code_name(RejectCode c) {
  switch (c) {
    case RejectCode::kUnauthenticated: return "UNAUTHENTICATED";
    case RejectCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case RejectCode::kAlreadyExists: return "ALREADY_EXISTS";
    case RejectCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case RejectCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case RejectCode::kUnavailable: return "UNAVAILABLE";
  }
  return "?";
}

std::optional<Rejection> check_metadata(const UpdateFacts& f, const ValidationPolicy& p,
                                        int64_t* staleness_out) {
  if (f.base_version == 0) {
    return Rejection{RejectCode::kInvalidArgument, "bad_version",
                     "base_version 0 is not a model version (versions start at 1); send the "
                     "version of the model the update was computed from"};
  }
  if (f.base_version > f.current_version) {
    return Rejection{RejectCode::kFailedPrecondition, "future_version",
                     str("base version ", f.base_version, " is newer than the server's ",
                         f.current_version, "; fetch the model again")};
  }
  // No wrap-around: base_version <= current_version.
  const uint64_t staleness = f.current_version - f.base_version;
  if (staleness > static_cast<uint64_t>(std::max<int64_t>(0, p.max_staleness))) {
    return Rejection{RejectCode::kFailedPrecondition, "stale",
                     str("base version ", f.base_version, " is ", staleness,
                         " versions behind the server's ", f.current_version,
                         " (max_staleness ", p.max_staleness, "); fetch the model again")};
  }
  if (f.sequence == 0 || f.sequence > kMaxSequence) {
    return Rejection{RejectCode::kInvalidArgument, "bad_sequence",
                     str("sequence ", f.sequence, " is outside [1, 2^63 - 1]; a client numbers "
                         "its updates from 1 up (strata_fed.proto)")};
  }
  if (f.sequence <= f.last_sequence) {
    return Rejection{RejectCode::kAlreadyExists, "replay",
                     str("sequence ", f.sequence, " from client ", quote(f.client_id),
                         " is not above its last accepted ", f.last_sequence,
                         " (a replay or a duplicate)")};
  }
  if (f.num_samples < 1 || f.num_samples > static_cast<uint64_t>(p.max_num_samples)) {
    return Rejection{RejectCode::kInvalidArgument, "num_samples",
                     str("num_samples ", f.num_samples, " is outside [1, ",
                         p.max_num_samples, "] (federated.server.max_num_samples)")};
  }
  if (staleness_out) *staleness_out = static_cast<int64_t>(staleness);
  return std::nullopt;
}

std::optional<Rejection> check_delta(at::Tensor& delta, const ValidationPolicy& p,
                                     Accepted* a) {
  if (!at::isfinite(delta).all().item<bool>()) {
    const int64_t first = at::logical_not(at::isfinite(delta)).nonzero()[0][0].item<int64_t>();
    return Rejection{RejectCode::kInvalidArgument, "non_finite",
                     str("the update has non-finite values (first at flat index ", first, ")")};
  }
  a->norm = delta.norm().item<double>();
  if (p.refuse_above > 0 && a->norm > p.refuse_above) {
    return Rejection{RejectCode::kInvalidArgument, "norm",
                     str("update L2 norm ", a->norm, " exceeds the clip norm ",
                         p.refuse_above / (1 + kClientClipTolerance),
                         " that clients must clip to (ClientConfig.clip_norm, "
                         "federated.privacy.client_clip)")};
  }
  if (p.norm_bound > 0 && a->norm > p.norm_bound) {
    if (!p.clip_to_bound) {
      return Rejection{RejectCode::kInvalidArgument, "norm",
                       str("update L2 norm ", a->norm, " exceeds the bound ", p.norm_bound)};
    }
    delta.mul_(p.norm_bound / a->norm);
    a->clipped = true;
  }
  return std::nullopt;
}

}  // namespace strata::fed
