// Checks an update before the server keeps it. Every failed check is a
// Rejection with a gRPC-style code, a reason that tells the client what was
// wrong, and a short key under which the server counts it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

namespace strata::fed {

enum class RejectCode {
  kUnauthenticated,     // token
  kFailedPrecondition,  // staleness, version from the future, wrong round
  kAlreadyExists,       // replayed sequence number
  kInvalidArgument,     // tensors, values, norm, sample count
  kResourceExhausted,   // too large
  kUnavailable,         // training finished or server stopping; retry elsewhere/later
};

const char* reject_code_name(RejectCode c);

struct Rejection {
  RejectCode code;
  std::string key;     // counter name: "stale", "replay", "non_finite", ...
  std::string reason;  // for the client and the log
};

struct ValidationPolicy {
  int64_t max_staleness = 10;       // versions; async mode
  double norm_bound = 0.0;          // L2 of the delta; 0: unbounded
  bool clip_to_bound = true;        // scale down (true) or reject (false)
  // Refuse an update whose norm exceeds this, whatever clip_to_bound says:
  // clients promised to clip (central DP with client_clip); 0: off.
  double refuse_above = 0.0;
  int64_t max_num_samples = 1000000;  // a client cannot claim more
};

// What passed validation, and what the validator did to it.
struct Accepted {
  int64_t staleness = 0;
  bool clipped = false;
  double norm = 0.0;  // before clipping
};

// An update's metadata as the wire carries it: unsigned 64-bit, so nothing
// a client sends can wrap around when read or compared (strata_fed.proto,
// "Versions and sequences").
struct UpdateFacts {
  std::string client_id;
  uint64_t base_version = 0;     // >= 1: versions start at 1
  uint64_t current_version = 0;  // the server's
  uint64_t sequence = 0;         // in [1, 2^63)
  uint64_t last_sequence = 0;    // the client's last accepted one (0: none)
  uint64_t num_samples = 0;
};

// How far above the clip norm a client-clipped update may be and still be
// taken (relative): what an fp16 encoding of a clipped update can add.
constexpr double kClientClipTolerance = 1e-3;

// Sequences are stored as SQLite integers: at most this.
constexpr uint64_t kMaxSequence = (uint64_t{1} << 63) - 1;

// Checks the metadata (version, staleness, sequence, sample count): cheap,
// done before the tensors are read. On success `staleness` (when given) is
// current_version - base_version, at most p.max_staleness.
std::optional<Rejection> check_metadata(const UpdateFacts& f, const ValidationPolicy& p,
                                        int64_t* staleness = nullptr);

// Checks the assembled flat delta (finite, norm) and clips it in place when
// the policy says so; fills `accepted` (norm, clipped).
std::optional<Rejection> check_delta(at::Tensor& delta, const ValidationPolicy& p,
                                     Accepted* accepted);

}  // namespace strata::fed
