// Private to the c10d-based backends (gloo, nccl): what they share. A c10d
// Work behind strata's Work, the error messages of failed operations, and
// C10dCommunicator<PG>, the operations both backends issue the same way
// (broadcast, all_gather, send, recv, barrier, split). Include only from a
// backend's .cpp, after that backend's c10d header.
#pragma once

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <chrono>
#include <functional>
#include <string>

#include "core/error.h"
#include "distributed/c10d_store.h"
#include "distributed/communicator.h"

namespace strata::dist {

inline c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return c10d::ReduceOp::SUM;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

inline bool looks_like_timeout(const std::string& what) {
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
    // LibTorch's errors carry a C++ backtrace; the message is enough here.
    const auto* c10 = dynamic_cast<const c10::Error*>(&e);
    std::string what = c10 != nullptr ? c10->what_without_backtrace() : e.what();
    while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
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

class C10dWork final : public Work {
 public:
  C10dWork(c10::intrusive_ptr<c10d::Work> work, OpContext ctx,
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

// The shared half of a c10d-backed Communicator. PG is the c10d process
// group class (ProcessGroupGloo, ProcessGroupNCCL); the backend creates
// pg_ in its constructor and supplies all_reduce, reduce_scatter, the
// device split() gathers on, and how to make a child group.
template <class PG>
class C10dCommunicator : public Communicator {
 public:
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  std::unique_ptr<Work> broadcast(at::Tensor& t, int root) override {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = timeout_;
    return issue("broadcast", -1, [&] { return pg_->broadcast(v, opts); });
  }

  std::unique_ptr<Work> all_gather(std::vector<at::Tensor>& outputs,
                                   const at::Tensor& input) override {
    STRATA_INTERNAL_ASSERT(static_cast<int>(outputs.size()) == size_);
    std::vector<std::vector<at::Tensor>> out{outputs};
    std::vector<at::Tensor> in{input};
    return issue("all_gather", -1, [&] { return pg_->allgather(out, in); });
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
    c10d::BarrierOptions opts;
    opts.timeout = timeout_;
    return issue("barrier", -1, [&] { return pg_->barrier(opts); });
  }

  std::shared_ptr<Communicator> split(int color, int key,
                                      const std::string& name) override {
    at::Tensor mine = at::tensor({int64_t{color}, int64_t{key}},
                                 at::TensorOptions().dtype(at::kLong).device(split_device()));
    std::vector<at::Tensor> all;
    for (int r = 0; r < size_; ++r) all.push_back(at::empty_like(mine));
    all_gather(all, mine)->wait();
    std::vector<int64_t> colors, keys;
    for (const auto& t : all) {
      const at::Tensor c = t.cpu();
      colors.push_back(c[0].item<int64_t>());
      keys.push_back(c[1].item<int64_t>());
    }
    const auto [rank, size] = split_position(colors, keys, rank_);
    // Counted on every rank alike (split is collective), so the child's
    // store prefix agrees across its members and differs from its siblings'.
    std::string prefix = str(prefix_, "/split", splits_++, "/", color);
    if (size == 1) return make_self_communicator(name, timeout_);
    return make_child(rank, size, name, std::move(prefix));
  }

 protected:
  // `prefix` namespaces this group's keys in the store: unique per group.
  C10dCommunicator(std::string name, int rank, int size,
                   std::chrono::milliseconds timeout,
                   std::shared_ptr<Store> store, std::string prefix)
      : name_(std::move(name)), rank_(rank), size_(size), timeout_(timeout),
        store_(std::move(store)), prefix_(std::move(prefix)) {}

  // Where split() gathers colours and keys (the backend's tensor device).
  virtual at::Device split_device() const = 0;
  virtual std::shared_ptr<Communicator> make_child(int rank, int size,
                                                   const std::string& name,
                                                   std::string prefix) = 0;

  // This group's view of the rendezvous store.
  c10::intrusive_ptr<c10d::Store> prefixed_store() const {
    return c10::make_intrusive<c10d::PrefixStore>(prefix_, store_->impl());
  }

  OpContext context(const std::string& op, int peer = -1) const {
    return OpContext{op, name_, rank_, size_, peer, timeout_};
  }

  template <class Issue>
  std::unique_ptr<Work> issue(const char* op, int peer, Issue&& start,
                              std::function<void()> on_success = {}) {
    try {
      return std::make_unique<C10dWork>(start(), context(op, peer),
                                        std::move(on_success));
    } catch (const std::exception& e) {
      context(op, peer).fail(e);
    }
  }

  std::string name_;
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<Store> store_;
  std::string prefix_;
  int splits_ = 0;
  c10::intrusive_ptr<PG> pg_;
};

}  // namespace strata::dist
