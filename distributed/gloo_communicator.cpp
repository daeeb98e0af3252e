// The gloo backend: LibTorch c10d's ProcessGroupGloo behind Communicator.
//
// This is the only translation unit that sees ProcessGroupGloo; LibTorch
// 1.13 vs 2.x differences in it stay here. Gloo in c10d has no AVG reduction
// and (in 1.13) no reduce_scatter: kAvg is a sum divided by the group size
// when the work completes, and reduce_scatter is an all-reduce of the stacked
// inputs followed by taking this rank's slice (twice the bytes of a true
// reduce-scatter; fine for the CPU paths that use it). Gloo in 1.13 cannot
// reduce float16/bfloat16 either: 16-bit tensors are all-gathered as bytes
// and reduced locally in float32 (for 2 ranks still half the bytes of a
// float32 all-reduce, which is what the compression hooks want).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <thread>

#include "core/error.h"
#include "distributed/c10d_communicator.h"
#include "distributed/communicator.h"

namespace strata::dist {
namespace {

class GlooCommunicator final : public C10dCommunicator<c10d::ProcessGroupGloo> {
 public:
  GlooCommunicator(const GlooOptions& o, std::string prefix)
      : C10dCommunicator(o.name, o.rank, o.size, o.timeout, o.store, std::move(prefix)),
        hostname_(o.hostname) {
    auto opts = c10d::ProcessGroupGloo::Options::create(o.timeout);
    opts->devices.push_back(make_device(o.hostname));
    opts->threads = 2;
    // Name where this rank listened: what a peer on another host had to
    // reach.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    const OpContext ctx = context(
        ifname != nullptr ? str("connect (this rank on interface ", ifname, ", GLOO_SOCKET_IFNAME)")
        : o.hostname.empty() ? std::string("connect (this rank at its host name's address)")
                             : str("connect (this rank at ", o.hostname, ")"));
    try {
      pg_ = connect_bounded(prefixed_store(), o.rank, o.size, opts, o.timeout);
    } catch (const std::exception& e) {
      ctx.fail(e);
    }
  }

  // Note [Bounded connect]: gloo retries a refused connection for its
  // timeout once per attempt, several times over (a peer that advertised an
  // address this rank cannot reach kept it waiting 50 s at a 10 s timeout),
  // so the full mesh is connected on a helper thread and given `timeout`
  // in all. Past it this rank fails; the helper, left to gloo's own
  // timeout, ends with the process.
  static c10::intrusive_ptr<c10d::ProcessGroupGloo> connect_bounded(
      c10::intrusive_ptr<c10d::Store> store, int rank, int size,
      c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> opts,
      std::chrono::milliseconds timeout) {
    using Result = c10::intrusive_ptr<c10d::ProcessGroupGloo>;
    auto done = std::make_shared<std::promise<Result>>();
    std::future<Result> result = done->get_future();
    std::thread([done, store, rank, size, opts] {
      try {
        done->set_value(c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts));
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    }).detach();
    if (result.wait_for(timeout) != std::future_status::ready) {
      throw std::runtime_error(str("Socket Timeout: the full mesh of ", size,
                                   " ranks was not connected"));
    }
    return result.get();
  }

  const char* backend() const override { return "gloo"; }
  bool supports(Capability c) const override { return c == Capability::kHostMemory; }

  std::unique_ptr<Work> all_reduce(at::Tensor& t, ReduceOp op) override {
    if (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) {
      return all_reduce_16bit(t, op);
    }
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_c10d(op);
    std::function<void()> post;
    if (op == ReduceOp::kAvg && size_ > 1) {
      at::Tensor alias = t;
      const double n = size_;
      post = [alias, n]() mutable { alias.div_(n); };
    }
    return issue("all_reduce", -1, [&] { return pg_->allreduce(v, opts); },
                 std::move(post));
  }

  std::unique_ptr<Work> all_reduce_16bit(at::Tensor& t, ReduceOp op) {
    STRATA_INTERNAL_ASSERT(t.is_contiguous(), "16-bit all_reduce needs a "
                           "contiguous tensor");
    at::Tensor bytes = t.view({-1}).view(at::kByte);
    std::vector<at::Tensor> gathered;
    for (int r = 0; r < size_; ++r) gathered.push_back(at::empty_like(bytes));
    auto work = all_gather(gathered, bytes);
    at::Tensor out = t;
    return std::make_unique<ComposedWork>(
        std::move(work), [out, gathered, op, n = size_]() mutable {
          std::vector<at::Tensor> parts;
          for (auto& g : gathered) parts.push_back(g.view(out.scalar_type()).to(at::kFloat));
          at::Tensor all = at::stack(parts);
          at::Tensor r = op == ReduceOp::kMax   ? std::get<0>(all.max(0))
                         : op == ReduceOp::kMin ? std::get<0>(all.min(0))
                                                : all.sum(0);
          if (op == ReduceOp::kAvg) r.div_(n);
          out.view({-1}).copy_(r);
        });
  }

  std::unique_ptr<Work> reduce_scatter(at::Tensor& output,
                                       std::vector<at::Tensor>& inputs,
                                       ReduceOp op) override {
    check_reduce_scatter_args(*this, output, inputs);
    at::Tensor stacked = at::stack(inputs);
    auto work = all_reduce(stacked, op);
    at::Tensor out = output;
    const int r = rank_;
    return std::make_unique<ComposedWork>(std::move(work), [out, stacked, r]() mutable {
      out.copy_(stacked[r]);
    });
  }

 private:
  at::Device split_device() const override { return at::kCPU; }

  std::shared_ptr<Communicator> make_child(int rank, int size,
                                           const std::string& name,
                                           std::string prefix) override {
    GlooOptions o;
    o.store = store_;
    o.rank = rank;
    o.size = size;
    o.name = name;
    o.timeout = timeout_;
    o.hostname = hostname_;
    return std::make_shared<GlooCommunicator>(o, std::move(prefix));
  }

  static std::shared_ptr<::gloo::transport::Device> make_device(
      const std::string& hostname) {
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
      return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
    }
    if (!hostname.empty()) {
      return c10d::ProcessGroupGloo::createDeviceForHostname(hostname);
    }
    return c10d::ProcessGroupGloo::createDefaultDevice();
  }

  std::string hostname_;
};

}  // namespace

std::shared_ptr<Communicator> make_gloo_communicator(const GlooOptions& o) {
  STRATA_CHECK_T(ConfigError, o.size >= 1 && o.rank >= 0 && o.rank < o.size,
                 "gloo group '", o.name, "': rank ", o.rank,
                 " is outside [0, ", o.size, ")");
  STRATA_INTERNAL_ASSERT(o.store != nullptr, "gloo needs a rendezvous store");
  return std::make_shared<GlooCommunicator>(o, "strata/" + o.name);
}

}  // namespace strata::dist
