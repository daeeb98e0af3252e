#include "federated/service.h"

#include "core/fs.h"
#include "federated/service_impl.h"

namespace strata::fed {
namespace {

using service_detail::FederationService;

class GrpcService final : public RunningService {
 public:
  GrpcService(FedServer& core, std::string operator_token)
      : core_(core), service_(core, std::move(operator_token)) {
    rpc::route_library_logs();
    const ServiceOptions& cfg = core.options().service;
    std::shared_ptr<grpc::ServerCredentials> creds;
    if (!cfg.tls_cert.empty()) {
      grpc::SslServerCredentialsOptions ssl;
      ssl.pem_key_cert_pairs.push_back({read_file(cfg.tls_key), read_file(cfg.tls_cert)});
      creds = grpc::SslServerCredentials(ssl);
    } else {
      creds = grpc::InsecureServerCredentials();
    }
    grpc::ServerBuilder b;
    b.AddListeningPort(cfg.address, creds, &port_);
    b.RegisterService(&service_);
    // One server per address: gRPC would otherwise set SO_REUSEPORT, and a
    // second server on the same port would take about half the connections.
    b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    b.SetMaxReceiveMessageSize(static_cast<int>(kMaxChunkBytes));
    b.SetMaxSendMessageSize(static_cast<int>(kMaxChunkBytes));
    if (cfg.stream_window_kb > 0) {
      // Note [Bounded ingest]: a fixed window instead of BDP-grown ones
      // (up to 4-16 MiB per stream), so a waiting sender parks at most this.
      b.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      b.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                           static_cast<int>(cfg.stream_window_kb * 1024));
    }
    server_ = b.BuildAndStart();
    if (server_ == nullptr || port_ <= 0) {
      service_.join();
      throw IoError(str("cannot serve on ", cfg.address, ": ", rpc::bind_error(cfg.address)));
    }
    log_info("serving federated protocol v1 on ", cfg.address.substr(0, cfg.address.rfind(':')),
             ":", port_, cfg.tls_cert.empty() ? " (plaintext, loopback)" : " (TLS)");
  }
  ~GrpcService() override { shutdown(); }
  int port() const override { return port_; }
  ServiceCounts counts() override { return service_.counts(); }
  ServiceCounts wait_counts(const std::function<bool(const ServiceCounts&)>& done,
                            std::chrono::milliseconds wait) override {
    return service_.wait_counts(done, wait);
  }
  void shutdown() override {
    if (!server_) return;
    // Waiting senders and long polls are answered at once, updates in
    // flight get 2 s, then gRPC cancels whatever is left.
    service_.stop();
    core_.stop_serving();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    service_.join();
    server_.reset();
  }

 private:
  FedServer& core_;
  FederationService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace

std::unique_ptr<RunningService> serve(FedServer& core, const std::string& operator_token) {
  return std::make_unique<GrpcService>(core, operator_token);
}

}  // namespace strata::fed
