#include "federated/service_impl.h"

namespace strata::fed::service_detail {

// ---- Upload ------------------------------------------------------------

void Upload::start() {
  self_ = shared_from_this();
  s_.watch(self_);
  std::lock_guard<std::mutex> lock(mu_);
  deadline_ = Clock::now() + std::chrono::milliseconds(
                                 static_cast<int64_t>(s_.cfg().first_message_timeout_s * 1000));
  StartRead(&buf_);
}

bool Upload::finish(const grpc::Status& status, const pb::SubmitReply* reply) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ == Phase::kDone) return false;
    phase_ = Phase::kDone;
    // The reply is written before Finish: gRPC owns reply_ only until then.
    if (reply) *reply_ = serialize(*reply);
  }
  s_.release(*this);
  Finish(status);
  return true;
}

void Upload::reject(const Rejection& r) {
  if (phase() == Phase::kDone) return;
  if (r.key == "busy" || r.key == "busy_client") {
    ctx_->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
  }
  s_.log_rejection(r, client, *ctx_);
  finish(to_status(r));
}

void Upload::OnCancel() {
  // An update being submitted is finished by its worker (it may already be
  // durable, and its memory is held until then).
  if (phase() == Phase::kSubmitting) return;
  finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
}

void Upload::OnReadDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  if (phase_ == Phase::kDone) return;
  if (!ok) {
    // The client half-closed, or the call ended.
    const Phase phase = phase_;
    lock.unlock();
    if (ctx_->IsCancelled()) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    } else if (phase == Phase::kInfo) {
      reject({RejectCode::kInvalidArgument, "malformed",
              "the stream ended before its first chunk (the UpdateInfo)"});
    } else if (phase == Phase::kTensors) {
      if (auto e = rx_->finish()) {
        reject(wire_rejection(*e));
        return;
      }
      lock.lock();
      if (phase_ != Phase::kTensors) return;
      phase_ = Phase::kSubmitting;
      deadline_ = kNever;
      lock.unlock();
      s_.enqueue_submit(shared_from_this());
    }
    return;
  }
  ++chunks_;
  pb::UpdateChunk chunk;
  const bool parsed = parse(buf_, &chunk);
  buf_.Clear();
  if (!parsed) {
    lock.unlock();
    reject({RejectCode::kInvalidArgument, "malformed",
            str("chunk ", chunks_, " of the stream is not a valid UpdateChunk (strata_fed.proto; "
                "string fields must be UTF-8)")});
    return;
  }
  if (phase_ == Phase::kInfo) {
    lock.unlock();
    if (chunk.part_case() != pb::UpdateChunk::kInfo) {
      reject({RejectCode::kInvalidArgument, "malformed",
              "the first chunk of an update must carry its info"});
      return;
    }
    on_info(chunk.info());
    return;
  }
  STRATA_INTERNAL_ASSERT(phase_ == Phase::kTensors, "a read in phase ", static_cast<int>(phase_));
  if (auto e = rx_->add(chunk)) {
    lock.unlock();
    reject(wire_rejection(*e));
    return;
  }
  last_chunk_ = Clock::now();
  deadline_ = last_chunk_ + std::chrono::milliseconds(
                                static_cast<int64_t>(s_.cfg().stream_idle_timeout_s * 1000));
  StartRead(&buf_);
}

void Upload::on_info(const pb::UpdateInfo& info) {
  if (auto r = s_.authenticate(*ctx_, info.client_id(), "SubmitUpdate")) {
    client = info.client_id();  // for the log line (escaped and cut there)
    reject(*r);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ != Phase::kInfo) return;
    info_ = info;
    deadline_ = kNever;
    phase_ = Phase::kWaiting;  // until admit() says otherwise
  }
  const ServiceOptions& cfg = s_.cfg();
  switch (s_.admit(shared_from_this(), info.client_id())) {
    case FederationService::Admit::kGranted: {
      std::lock_guard<std::mutex> lock(mu_);
      if (phase_ == Phase::kWaiting) read_tensors_locked();
      return;
    }
    case FederationService::Admit::kQueued:
      return;
    case FederationService::Admit::kStopping:
      reject({RejectCode::kUnavailable, "stopping", "the server is shutting down; retry later"});
      return;
    case FederationService::Admit::kBusyClient:
      client = info.client_id();
      reject({RejectCode::kUnavailable, "busy_client",
              str("client ", quote(info.client_id()), " already has ",
                  cfg.max_uploads_per_client, " upload(s) open "
                  "(federated.server.max_uploads_per_client); retry with backoff")});
      return;
    case FederationService::Admit::kBusy:
      client = info.client_id();
      reject({RejectCode::kUnavailable, "busy",
              str("the server is busy: ", cfg.max_inflight_updates,
                  " updates are being received and ", cfg.max_waiting_updates,
                  " senders wait (federated.server.max_inflight_updates, "
                  "max_waiting_updates); retry with backoff")});
      return;
  }
}

bool Upload::admitted() {
  std::lock_guard<std::mutex> lock(mu_);
  if (phase_ != Phase::kWaiting) return false;
  read_tensors_locked();
  return true;
}

void Upload::read_tensors_locked() {
  phase_ = Phase::kTensors;
  const uint64_t limit = static_cast<uint64_t>(s_.cfg().max_message_mb) << 20;
  rx_ = std::make_unique<UpdateReceiver>(s_.core().layout(), info_.num_tensors(), limit);
  last_chunk_ = Clock::now();
  deadline_ = last_chunk_ + std::chrono::milliseconds(
                                static_cast<int64_t>(s_.cfg().stream_idle_timeout_s * 1000));
  StartRead(&buf_);
}

void Upload::expire(Clock::time_point now, bool contended) {
  const ServiceOptions& cfg = s_.cfg();
  Phase phase;
  bool contended_stall = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase = phase_;
    contended_stall = phase == Phase::kTensors &&
                      now - last_chunk_ >= std::chrono::duration<double>(cfg.contended_idle_timeout_s);
    if (now < deadline_ && !contended_stall) return;
  }
  if (now < deadline_ && contended_stall) {
    if (!contended) return;
    reject({RejectCode::kInvalidArgument, "idle",
            str("no chunk for ", format_double(cfg.contended_idle_timeout_s),
                " s while other senders waited for a slot "
                "(federated.server.contended_idle_timeout_s); the upload was ended")});
    return;
  }
  if (phase == Phase::kInfo) {
    // Not counted as a refused update: nobody has said who they are.
    log_debug("ended an upload from ", quote(ctx_->peer()), " that sent no first chunk in ",
              format_double(cfg.first_message_timeout_s), " s");
    finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        str("no first chunk within ", format_double(cfg.first_message_timeout_s),
                            " s (federated.server.first_message_timeout_s)")));
  } else if (phase == Phase::kTensors) {
    reject({RejectCode::kInvalidArgument, "idle",
            str("no chunk for ", format_double(cfg.stream_idle_timeout_s),
                " s (federated.server.stream_idle_timeout_s); the upload was ended")});
  }
}

void Upload::submit() {
  SubmitMeta m;
  m.client_id = info_.client_id();
  m.base_version = info_.base_version();
  m.num_samples = info_.num_samples();
  m.sequence = info_.sequence();
  m.round = info_.round();
  m.is_gradient = info_.kind() == pb::GRADIENT;
  m.learning_rate = info_.learning_rate();
  m.peer = ctx_->peer();
  SubmitOutcome o;
  try {
    o = s_.core().submit(m, rx_->take());
  } catch (const std::exception& e) {
    log_error("submitting an update from ", quote(m.client_id), " failed: ", e.what());
    finish(grpc::Status(grpc::StatusCode::INTERNAL, "the server could not store the update"));
    return;
  }
  rx_.reset();
  if (o.rejection) {
    // FedServer::submit counted and logged it.
    if (o.rejection->code == RejectCode::kUnavailable) {
      ctx_->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
    }
    finish(to_status(*o.rejection));
    return;
  }
  pb::SubmitReply reply;
  reply.set_update_id(static_cast<uint64_t>(o.update_id));
  reply.set_current_version(static_cast<uint64_t>(o.current_version));
  reply.set_staleness(static_cast<uint64_t>(o.staleness));
  reply.set_weight(o.weight);
  reply.set_clipped(o.clipped);
  finish(grpc::Status::OK, &reply);
}

// ---- Poll ----------------------------------------------------------------

void Poll::start(const grpc::ByteBuffer& request) {
  self_ = shared_from_this();
  pb::GetModelRequest req;
  if (!parse(request, &req)) {
    finish(unparseable("the GetModelRequest"));
    return;
  }
  if (auto r = s_.authenticate(*ctx_, req.client_id(), "GetModel")) {
    finish(to_status(*r));
    return;
  }
  const std::string& format = req.format();
  if (!format.empty() && format != "fp32" && format != "strata-int8") {
    finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        str("GetModel format ", quote(format, 32), " is not one of fp32, "
                            "strata-int8")));
    return;
  }
  if (format == "strata-int8" && s_.core().options().service.publish == "none") {
    finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this server does not publish strata-int8 packages "
                        "(federated.server.publish is none); fetch the fp32 model"));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    have_ = req.have_version();
    client = req.client_id();
    package_ = format == "strata-int8";
  }
  FedServer& core = s_.core();
  core.check_in(req.client_id());
  if (auto v = core.model_if_ready(req.client_id(), req.have_version())) {
    answer(*v);
    return;
  }
  const auto wait = std::chrono::milliseconds(std::min<uint32_t>(req.wait_ms(), 60000));
  if (wait.count() == 0) {
    answer(core.model_view(req.client_id()));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    deadline_ = Clock::now() + wait;
    waiting_ = true;
  }
  if (!s_.begin_poll(shared_from_this(), req.client_id())) {
    ctx_->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        str("client ", quote(req.client_id()), " already has ",
                            s_.cfg().max_polls_per_client, " long poll(s) open "
                            "(federated.server.max_polls_per_client), or the server is "
                            "shutting down; retry with backoff")));
  }
  // The watchdog answers from here on (at once if news came meanwhile: it
  // checks a poll it has not seen before).
}

bool Poll::check(bool changed, Clock::time_point now, bool stopping) {
  std::optional<ModelView> v;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    if (!waiting_) return true;
    if (stopping) {
      waiting_ = false;
    } else {
      const bool fresh = !seen_;
      seen_ = true;
      if (!(changed || fresh) && now < deadline_) return true;
    }
  }
  FedServer& core = s_.core();
  if (stopping) {
    // A client waiting when training finished learns that it did (and
    // stops); any other is told to come back.
    const ModelView now_view = core.model_view(client);
    if (now_view.finished) {
      s_.end_poll(*this);
      answer(now_view);
      return true;
    }
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down; retry later"));
    return false;
  }
  v = core.model_if_ready(client, have_);
  if (!v && now >= deadline_) v = core.model_view(client);
  if (!v) return true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ || !waiting_) return !done_;
    waiting_ = false;
  }
  s_.end_poll(*this);
  answer(*v);
  return true;
}

void Poll::answer(const ModelView& v) {
  pb::ModelChunk info;
  rpc::fill_model_info(s_.core(), v, info.mutable_info());
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> model;
  // The tensors (or the package) go whenever the version is not the client's.
  if (static_cast<uint64_t>(v.version) != have_) {
    if (package_) {
      uint64_t package_bytes = 0;
      try {
        model = s_.encoded_package(v, &package_bytes);
      } catch (const std::exception& e) {
        log_warn("cannot publish version ", v.version, " as a strata-int8 package: ", e.what());
        finish(grpc::Status(grpc::StatusCode::INTERNAL,
                            "the server could not build the strata-int8 package"));
        return;
      }
      info.mutable_info()->set_format("strata-int8");
      info.mutable_info()->set_package_bytes(package_bytes);
    } else {
      model = s_.encoded(v);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (done_) return;
  info_ = serialize(info);
  model_ = std::move(model);
  next_ = 0;
  write_next_locked();
}

void Poll::write_next_locked() {
  if (next_ == 0) {
    ++next_;
    StartWrite(&info_);
    return;
  }
  if (!model_ || next_ - 1 >= model_->size()) {
    done_ = true;
    model_.reset();
    Finish(grpc::Status::OK);
    return;
  }
  cur_ = (*model_)[next_ - 1];
  ++next_;
  StartWrite(&cur_);
}

void Poll::OnWriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    if (ok) {
      write_next_locked();
      return;
    }
  }
  finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
}

bool Poll::finish(const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    done_ = true;
    waiting_ = false;
  }
  s_.end_poll(*this);
  Finish(status);
  return true;
}

}  // namespace strata::fed::service_detail
