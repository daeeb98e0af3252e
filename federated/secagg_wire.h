// Secure aggregation's messages (secagg.h) to and from strata_fed.proto's.
// from_pb trusts nothing: a field of the wrong size or a count beyond the
// round's bounds is an error string naming it (the server refuses the
// message with it; a client stops the round).
#pragma once

#include <optional>
#include <string>

#include "federated/secagg.h"
#include "strata_fed.pb.h"

namespace strata::fed::secagg {

namespace pb = ::strata::fed::v1;

void to_pb(const KeysMsg& m, pb::SecAggKeys* out);
void to_pb(const RosterMsg& m, pb::SecAggRoster* out);
void to_pb(const SharesMsg& m, pb::SecAggShares* out);
void to_pb(const InboxMsg& m, pb::SecAggInbox* out);
void to_pb(const UnmaskMsg& m, pb::SecAggFate* out);
void to_pb(const RevealMsg& m, pb::SecAggReveal* out);

// Lists longer than `max_entries` (the round's clients) are refused.
std::optional<std::string> from_pb(const pb::SecAggKeys& m, KeysMsg* out);
std::optional<std::string> from_pb(const pb::SecAggRoster& m, size_t max_entries, RosterMsg* out);
std::optional<std::string> from_pb(const pb::SecAggShares& m, size_t max_entries, SharesMsg* out);
std::optional<std::string> from_pb(const pb::SecAggInbox& m, size_t max_entries, InboxMsg* out);
std::optional<std::string> from_pb(const pb::SecAggFate& m, size_t max_entries, UnmaskMsg* out);
std::optional<std::string> from_pb(const pb::SecAggReveal& m, size_t max_entries, RevealMsg* out);

}  // namespace strata::fed::secagg
