// The nccl backend: LibTorch c10d's ProcessGroupNCCL behind Communicator.
//
// Compiled only when LibTorch has CUDA (STRATA_TORCH_CUDA); the only
// translation unit that sees ProcessGroupNCCL. The NCCL unique id travels
// through the rendezvous store (c10d does this), which itself came from
// MPI (under mpirun) or MASTER_ADDR/MASTER_PORT.
//
// Semantics differ from the CPU backends in one way: wait() makes the
// current CUDA stream wait for the collective (it does not block the CPU),
// which is what training wants. A dead or stalled peer is caught by c10d's
// NCCL watchdog after the group's timeout: it aborts the communicator and
// ends the process with the failed operation in the log (c10d's
// TORCH_NCCL_ASYNC_ERROR_HANDLING default), so no rank hangs.
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "core/error.h"
#include "distributed/c10d_communicator.h"
#include "distributed/communicator.h"

namespace strata::dist {
namespace {

c10d::ReduceOp to_nccl(ReduceOp op) {
  return op == ReduceOp::kAvg ? c10d::ReduceOp(c10d::ReduceOp::AVG) : to_c10d(op);
}

class NcclCommunicator final : public C10dCommunicator<c10d::ProcessGroupNCCL> {
 public:
  NcclCommunicator(const NcclOptions& o, std::string prefix)
      : C10dCommunicator(o.name, o.rank, o.size, o.timeout, o.store, std::move(prefix)) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = o.timeout;
    try {
      pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed_store(), o.rank,
                                                        o.size, opts);
    } catch (const std::exception& e) {
      context("connect").fail(e);
    }
  }

  const char* backend() const override { return "nccl"; }
  bool supports(Capability c) const override { return c != Capability::kHostMemory; }

  std::unique_ptr<Work> all_reduce(at::Tensor& t, ReduceOp op) override {
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_nccl(op);
    opts.timeout = timeout_;
    return issue("all_reduce", -1, [&] { return pg_->allreduce(v, opts); });
  }

  std::unique_ptr<Work> reduce_scatter(at::Tensor& output,
                                       std::vector<at::Tensor>& inputs,
                                       ReduceOp op) override {
    check_reduce_scatter_args(*this, output, inputs);
    std::vector<at::Tensor> out{output};
    std::vector<std::vector<at::Tensor>> in{inputs};
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = to_nccl(op);
    opts.timeout = timeout_;
    return issue("reduce_scatter", -1, [&] { return pg_->reduce_scatter(out, in, opts); });
  }

 private:
  // NCCL gathers device memory: split's colours and keys go through CUDA.
  at::Device split_device() const override { return at::kCUDA; }

  std::shared_ptr<Communicator> make_child(int rank, int size,
                                           const std::string& name,
                                           std::string prefix) override {
    NcclOptions o;
    o.store = store_;
    o.rank = rank;
    o.size = size;
    o.name = name;
    o.timeout = timeout_;
    return std::make_shared<NcclCommunicator>(o, std::move(prefix));
  }
};

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(const NcclOptions& o) {
  STRATA_CHECK_T(ConfigError, o.size >= 1 && o.rank >= 0 && o.rank < o.size,
                 "nccl group '", o.name, "': rank ", o.rank, " is outside [0, ",
                 o.size, ")");
  STRATA_INTERNAL_ASSERT(o.store != nullptr, "nccl needs a rendezvous store");
  return std::make_shared<NcclCommunicator>(o, "strata/" + o.name);
}

}  // namespace strata::dist
