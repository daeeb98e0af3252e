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
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdlib>
#include <functional>

#include "core/error.h"
#include "distributed/c10d_store.h"
#include "distributed/communicator.h"

namespace strata::dist {
namespace {

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return c10d::ReduceOp::SUM;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

bool looks_like_timeout(const std::string& what) {
  return what.find("imed out") != std::string::npos ||
         what.find("imeout") != std::string::npos;
}

// What a failed operation was, for its error message.
struct OpContext {
  std::string op;     // "all_reduce", "send", ...
  std::string group;  // communicator name
  int rank = 0;
  int size = 1;
  int peer = -1;      // point to point only
  std::chrono::milliseconds timeout{0};

  [[noreturn]] void fail(const std::exception& e) const {
    const std::string what = e.what();
    const std::string where = str(op, " on group '", group, "' (rank ", rank,
                                  "/", size, peer >= 0 ? str(", peer ", peer) : "",
                                  ")");
    if (looks_like_timeout(what)) {
      throw TimeoutError(str(where, " timed out after ", timeout.count() / 1000.0,
                             " s: ", peer >= 0 ? str("rank ", peer) : "a peer",
                             " is dead or stalled; check the other ranks' "
                             "logs, or raise distributed.timeout_s (", what, ")"));
    }
    throw CommError(str(where, " failed: ", what, "; a peer process probably "
                        "exited, check the other ranks' logs"));
  }
};

class GlooWork final : public Work {
 public:
  GlooWork(c10::intrusive_ptr<c10d::Work> work, OpContext ctx,
           std::function<void()> on_success = {})
      : work_(std::move(work)), ctx_(std::move(ctx)),
        on_success_(std::move(on_success)) {}
  void wait() override {
    if (done_) return;
    try {
      work_->wait(ctx_.timeout);
    } catch (const std::exception& e) {
      ctx_.fail(e);
    }
    done_ = true;
    if (on_success_) on_success_();
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  OpContext ctx_;
  std::function<void()> on_success_;
  bool done_ = false;
};

// A Work followed by a local step (e.g. taking a slice) on success.
class ComposedWork final : public Work {
 public:
  ComposedWork(std::unique_ptr<Work> inner, std::function<void()> then)
      : inner_(std::move(inner)), then_(std::move(then)) {}
  void wait() override {
    inner_->wait();
    if (then_) std::exchange(then_, nullptr)();
  }

 private:
  std::unique_ptr<Work> inner_;
  std::function<void()> then_;
};

class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(const GlooOptions& o)
      : name_(o.name), rank_(o.rank), size_(o.size), timeout_(o.timeout) {
    auto opts = c10d::ProcessGroupGloo::Options::create(o.timeout);
    opts->devices.push_back(make_device(o.hostname));
    opts->threads = 2;
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        "strata/" + o.name, o.store->impl());
    try {
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.size,
                                                        opts);
    } catch (const std::exception& e) {
      context("connect").fail(e);
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "gloo"; }

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

  std::unique_ptr<Work> broadcast(at::Tensor& t, int root) override {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    return issue("broadcast", -1, [&] { return pg_->broadcast(v, opts); });
  }

  std::unique_ptr<Work> all_gather(std::vector<at::Tensor>& outputs,
                                   const at::Tensor& input) override {
    STRATA_INTERNAL_ASSERT(static_cast<int>(outputs.size()) == size_);
    std::vector<std::vector<at::Tensor>> out{outputs};
    std::vector<at::Tensor> in{input};
    return issue("all_gather", -1, [&] { return pg_->allgather(out, in); });
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

  std::unique_ptr<Work> send(const at::Tensor& t, int peer, int tag) override {
    std::vector<at::Tensor> v{t.contiguous()};
    return issue("send", peer, [&] { return pg_->send(v, peer, tag); });
  }

  std::unique_ptr<Work> recv(at::Tensor& t, int peer, int tag) override {
    STRATA_INTERNAL_ASSERT(t.is_contiguous(), "recv needs a contiguous tensor");
    std::vector<at::Tensor> v{t};
    return issue("recv", peer, [&] { return pg_->recv(v, peer, tag); });
  }

  std::unique_ptr<Work> barrier() override {
    return issue("barrier", -1, [&] { return pg_->barrier(); });
  }

 private:
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

  OpContext context(const std::string& op, int peer = -1) const {
    return OpContext{op, name_, rank_, size_, peer, timeout_};
  }

  template <class Issue>
  std::unique_ptr<Work> issue(const char* op, int peer, Issue&& start,
                              std::function<void()> on_success = {}) {
    try {
      return std::make_unique<GlooWork>(start(), context(op, peer),
                                        std::move(on_success));
    } catch (const std::exception& e) {
      context(op, peer).fail(e);
    }
  }

  std::string name_;
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

}  // namespace

std::shared_ptr<Communicator> make_gloo_communicator(const GlooOptions& o) {
  STRATA_CHECK_T(ConfigError, o.size >= 1 && o.rank >= 0 && o.rank < o.size,
                 "gloo group '", o.name, "': rank ", o.rank,
                 " is outside [0, ", o.size, ")");
  STRATA_INTERNAL_ASSERT(o.store != nullptr, "gloo needs a rendezvous store");
  return std::make_shared<GlooCommunicator>(o);
}

}  // namespace strata::dist
