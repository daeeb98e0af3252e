// The SecAgg call (strata_fed.proto; Note [Secure aggregation] in
// secagg.h) as a callback reactor: parse, authenticate, apply on a worker,
// answer now or when the stage closes.
#include "federated/secagg_wire.h"
#include "federated/service_impl.h"

namespace strata::fed::service_detail {
namespace {

// The request as the core takes it; an INVALID_ARGUMENT reason if malformed.
std::optional<std::string> to_call(const pb::SecAggRequest& req, size_t max_clients,
                                   SecAggCall* call) {
  call->round = req.round();
  switch (req.stage_case()) {
    case pb::SecAggRequest::kKeys:
      call->kind = SecAggCall::Kind::kKeys;
      return secagg::from_pb(req.keys(), &call->keys);
    case pb::SecAggRequest::kShares:
      call->kind = SecAggCall::Kind::kShares;
      return secagg::from_pb(req.shares(), max_clients, &call->shares);
    case pb::SecAggRequest::kInput:
      call->kind = SecAggCall::Kind::kInput;
      call->input.num_samples = req.input().num_samples();
      call->input.sequence = req.input().sequence();
      call->input.offset = req.input().offset();
      call->input.data = req.input().data();
      return std::nullopt;
    case pb::SecAggRequest::kUnmask:
      call->kind = SecAggCall::Kind::kUnmask;
      return std::nullopt;
    case pb::SecAggRequest::kReveal:
      call->kind = SecAggCall::Kind::kReveal;
      return secagg::from_pb(req.reveal(), max_clients, &call->reveal);
    case pb::SecAggRequest::STAGE_NOT_SET: break;
  }
  return std::string("the SecAggRequest names no stage (keys, shares, input, unmask or reveal)");
}

}  // namespace

void StageCall::start(const grpc::ByteBuffer& request) {
  self_ = shared_from_this();
  pb::SecAggRequest req;
  if (!parse(request, &req)) {
    finish(unparseable("the SecAggRequest"));
    return;
  }
  if (auto r = s_.authenticate(*ctx_, req.client_id(), "SecAgg")) {
    finish(to_status(*r));
    return;
  }
  const ServerOptions& o = s_.core().options();
  const auto max_clients = static_cast<size_t>(selected_per_round(o.sync));
  if (auto why = to_call(req, max_clients + 1, &call_)) {
    const Rejection r{RejectCode::kInvalidArgument, "secagg_malformed", *why};
    s_.log_rejection(r, req.client_id(), *ctx_);
    finish(to_status(r));
    return;
  }
  client = req.client_id();
  deadline_ = Clock::now() + std::chrono::milliseconds(std::min<uint32_t>(req.wait_ms(), 60000));
  s_.enqueue([self = self_] { self->apply(); });
}

void StageCall::apply() {
  const SecAggAnswer a = s_.core().secagg(client, call_);
  if (a.rejection || !a.pending) {
    answer(a);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    waiting_ = true;
  }
  if (!s_.begin_wait(self_, client)) {
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "too many SecAgg calls of this client are waiting (or the server is "
                        "shutting down); retry"));
  }
}

bool StageCall::check(bool changed, Clock::time_point now, bool stopping) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    if (!waiting_) return true;
    // The first look asks the core whatever the epoch says: the stage may
    // have closed between the worker's answer and this call's registration.
    const bool fresh = !seen_;
    seen_ = true;
    if (!stopping && !changed && !fresh && now < deadline_) return true;
  }
  if (stopping) {
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down; retry later"));
    return false;
  }
  const SecAggAnswer a = s_.core().secagg_answer(client, call_);
  if (!a.rejection && a.pending && now < deadline_) return true;
  answer(a);  // at the deadline: `pending`, ask again
  return false;
}

void StageCall::answer(const SecAggAnswer& a) {
  if (a.rejection) {
    finish(to_status(*a.rejection));
    return;
  }
  pb::SecAggReply reply;
  reply.set_pending(a.pending);
  reply.set_received(static_cast<uint64_t>(a.received));
  if (a.roster) secagg::to_pb(*a.roster, reply.mutable_roster());
  if (a.inbox) secagg::to_pb(*a.inbox, reply.mutable_inbox());
  if (a.fate) secagg::to_pb(*a.fate, reply.mutable_fate());
  finish(grpc::Status::OK, &reply);
}

bool StageCall::finish(const grpc::Status& status, const pb::SecAggReply* reply) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    done_ = true;
    waiting_ = false;
    if (reply) *response_ = serialize(*reply);
  }
  s_.end_wait(*this);
  Finish(status);
  return true;
}

}  // namespace strata::fed::service_detail
