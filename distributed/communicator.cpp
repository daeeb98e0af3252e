// Backend-independent parts of Communicator: argument checks, the self
// communicator, the arithmetic of split.
#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "distributed/communicator.h"

namespace strata::dist {

void check_reduce_scatter_args(const Communicator& comm,
                               const at::Tensor& output,
                               const std::vector<at::Tensor>& inputs) {
  STRATA_CHECK_T(ConfigError, static_cast<int>(inputs.size()) == comm.size(),
                 "reduce_scatter on group '", comm.name(), "': ", inputs.size(),
                 " inputs for ", comm.size(), " ranks; pass one per rank");
  for (size_t r = 0; r < inputs.size(); ++r) {
    STRATA_CHECK_T(ConfigError, inputs[r].scalar_type() == output.scalar_type() &&
                                    inputs[r].sizes() == output.sizes(),
                   "reduce_scatter on group '", comm.name(), "': input ", r,
                   " is ", inputs[r].scalar_type(), inputs[r].sizes(),
                   " but the output is ", output.scalar_type(), output.sizes(),
                   "; every input must match the output");
  }
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

at::Device transport_device(const Communicator& c, at::Device compute) {
  const bool moves = compute.is_cpu() ? c.supports(Capability::kHostMemory)
                                      : c.supports(Capability::kDeviceMemory);
  return moves ? compute : at::Device(at::kCPU);
}

std::pair<int, int> split_position(const std::vector<int64_t>& colors,
                                   const std::vector<int64_t>& keys,
                                   int parent_rank) {
  STRATA_INTERNAL_ASSERT(colors.size() == keys.size() && parent_rank >= 0 &&
                         parent_rank < static_cast<int>(colors.size()));
  const int64_t mine = colors[parent_rank];
  std::vector<int> members;
  for (int r = 0; r < static_cast<int>(colors.size()); ++r) {
    if (colors[r] == mine) members.push_back(r);
  }
  std::stable_sort(members.begin(), members.end(),
                   [&](int a, int b) { return keys[a] < keys[b]; });
  const auto it = std::find(members.begin(), members.end(), parent_rank);
  return {static_cast<int>(it - members.begin()), static_cast<int>(members.size())};
}

namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
};

class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator(std::string name, std::chrono::milliseconds timeout)
      : name_(std::move(name)), timeout_(timeout) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "self"; }
  bool supports(Capability) const override { return true; }

  std::unique_ptr<Work> all_reduce(at::Tensor&, ReduceOp) override { return done(); }
  std::unique_ptr<Work> broadcast(at::Tensor&, int root) override {
    check_peer("broadcast", root);
    return done();
  }
  std::unique_ptr<Work> all_gather(std::vector<at::Tensor>& outputs,
                                   const at::Tensor& input) override {
    STRATA_INTERNAL_ASSERT(outputs.size() == 1, "all_gather on a group of one "
                           "rank takes one output, got ", outputs.size());
    outputs[0].copy_(input);
    return done();
  }
  std::unique_ptr<Work> reduce_scatter(at::Tensor& output,
                                       std::vector<at::Tensor>& inputs,
                                       ReduceOp) override {
    check_reduce_scatter_args(*this, output, inputs);
    output.copy_(inputs[0]);
    return done();
  }
  std::unique_ptr<Work> send(const at::Tensor&, int peer, int) override {
    return no_p2p("send", peer);
  }
  std::unique_ptr<Work> recv(at::Tensor&, int peer, int) override {
    return no_p2p("recv", peer);
  }
  std::unique_ptr<Work> barrier() override { return done(); }
  std::shared_ptr<Communicator> split(int, int, const std::string& name) override {
    return std::make_shared<SelfCommunicator>(name, timeout_);
  }

 private:
  static std::unique_ptr<Work> done() { return std::make_unique<DoneWork>(); }
  void check_peer(const char* op, int peer) const {
    STRATA_CHECK_T(InternalError, peer == 0, op, " on group '", name_,
                   "' (1 rank): rank ", peer, " does not exist");
  }
  [[noreturn]] std::unique_ptr<Work> no_p2p(const char* op, int peer) const {
    throw InternalError(str(op, " on group '", name_, "' (1 rank) to rank ", peer,
                            ": a group of one rank has no peer to talk to"));
  }

  std::string name_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

std::shared_ptr<Communicator> make_self_communicator(const std::string& name,
                                                     std::chrono::milliseconds timeout) {
  return std::make_shared<SelfCommunicator>(name, timeout);
}

}  // namespace strata::dist
