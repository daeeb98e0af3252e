// The mpi backend: MPI_I* non-blocking operations, completed by Work::wait().
//
// MPI has no timeouts: wait() polls MPI_Test until the operation completes or
// the group's timeout passes, then throws TimeoutError naming the operation
// (an MPI operation cannot be cancelled; the process is expected to exit,
// which makes mpirun stop the job). MPI has no average and no 16-bit float
// reductions: kAvg divides a sum on completion, and float16/bfloat16 tensors
// are reduced in a float32 copy (correct, but without the bandwidth saving
// the compression hooks are for -- use gloo or nccl for those).
#include "distributed/mpi_communicator.h"

#include <mpi.h>
#include <time.h>

#include <functional>

#include "core/error.h"

namespace strata::dist {
namespace {

using Clock = std::chrono::steady_clock;

MPI_Datatype mpi_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kChar: return MPI_INT8_T;
    default: break;
  }
  throw CommError(str("mpi backend: dtype ", t, " is not supported; use "
                      "float32/64, int8/32/64 or uint8"));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

class MpiWork final : public Work {
 public:
  MpiWork(std::vector<MPI_Request> requests, std::string where,
          std::chrono::milliseconds timeout, std::function<void()> on_success,
          std::vector<at::Tensor> keep_alive)
      : requests_(std::move(requests)), where_(std::move(where)),
        timeout_(timeout), on_success_(std::move(on_success)),
        keep_alive_(std::move(keep_alive)) {}

  void wait() override {
    if (done_) return;
    const auto deadline = Clock::now() + timeout_;
    int polls = 0;
    for (;;) {
      int flag = 0;
      const int rc = MPI_Testall(static_cast<int>(requests_.size()),
                                 requests_.data(), &flag, MPI_STATUSES_IGNORE);
      STRATA_CHECK_T(CommError, rc == MPI_SUCCESS, where_, " failed with MPI "
                     "error ", rc, "; check the other ranks' logs");
      if (flag) break;
      STRATA_CHECK_T(TimeoutError, Clock::now() < deadline, where_,
                     " timed out after ", timeout_.count() / 1000.0, " s: a "
                     "peer is dead or stalled; check the other ranks' logs, or "
                     "raise distributed.timeout_s");
      // Spin briefly (latency), then back off (leave the core to compute).
      if (++polls > 1000) {
        timespec ts{0, 50000};
        nanosleep(&ts, nullptr);
      }
    }
    done_ = true;
    if (on_success_) on_success_();
    keep_alive_.clear();
  }

 private:
  std::vector<MPI_Request> requests_;
  std::string where_;
  std::chrono::milliseconds timeout_;
  std::function<void()> on_success_;
  std::vector<at::Tensor> keep_alive_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, const MpiCommOptions& o)
      : comm_(comm), name_(o.name), timeout_(o.timeout) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "mpi"; }
  bool supports(Capability c) const override { return c == Capability::kHostMemory; }

  std::unique_ptr<Work> all_reduce(at::Tensor& t, ReduceOp op) override {
    STRATA_INTERNAL_ASSERT(t.is_contiguous(), "all_reduce needs a contiguous tensor");
    const bool widen = t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
    at::Tensor buf = widen ? t.to(at::kFloat) : t;
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, buf.data_ptr(), count(buf),
                         mpi_type(buf.scalar_type()), mpi_op(op), comm_, &req),
          "all_reduce");
    at::Tensor out = t;
    const double n = size_;
    return work({req}, "all_reduce", [out, buf, op, n, widen]() mutable {
      if (op == ReduceOp::kAvg) buf.div_(n);
      if (widen) out.copy_(buf);
    }, {buf});
  }

  std::unique_ptr<Work> broadcast(at::Tensor& t, int root) override {
    MPI_Request req;
    check(MPI_Ibcast(t.data_ptr(), count(t), mpi_type(t.scalar_type()), root,
                     comm_, &req), "broadcast");
    return work({req}, "broadcast", {}, {t});
  }

  std::unique_ptr<Work> all_gather(std::vector<at::Tensor>& outputs,
                                   const at::Tensor& input) override {
    STRATA_INTERNAL_ASSERT(static_cast<int>(outputs.size()) == size_);
    at::Tensor in = input.contiguous();
    at::Tensor flat = at::empty({size_ * in.numel()}, in.options());
    MPI_Request req;
    check(MPI_Iallgather(in.data_ptr(), count(in), mpi_type(in.scalar_type()),
                         flat.data_ptr(), count(in), mpi_type(in.scalar_type()),
                         comm_, &req), "all_gather");
    std::vector<at::Tensor> outs = outputs;
    return work({req}, "all_gather", [outs, flat, in]() mutable {
      for (size_t r = 0; r < outs.size(); ++r) {
        outs[r].copy_(flat.narrow(0, r * in.numel(), in.numel()).view_as(outs[r]));
      }
    }, {in, flat});
  }

  std::unique_ptr<Work> reduce_scatter(at::Tensor& output,
                                       std::vector<at::Tensor>& inputs,
                                       ReduceOp op) override {
    check_reduce_scatter_args(*this, output, inputs);
    at::Tensor in = at::cat(inputs).contiguous();
    at::Tensor out = output.is_contiguous() ? output : output.contiguous();
    MPI_Request req;
    check(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), count(out),
                                    mpi_type(out.scalar_type()), mpi_op(op),
                                    comm_, &req), "reduce_scatter");
    at::Tensor target = output;
    const double n = size_;
    return work({req}, "reduce_scatter", [target, out, op, n]() mutable {
      if (op == ReduceOp::kAvg) out.div_(n);
      if (!target.is_same(out)) target.copy_(out);
    }, {in, out});
  }

  std::unique_ptr<Work> send(const at::Tensor& t, int peer, int tag) override {
    at::Tensor c = t.contiguous();
    MPI_Request req;
    check(MPI_Isend(c.data_ptr(), count(c), mpi_type(c.scalar_type()), peer,
                    tag, comm_, &req), "send", peer);
    return work({req}, "send", {}, {c}, peer);
  }

  std::unique_ptr<Work> recv(at::Tensor& t, int peer, int tag) override {
    STRATA_INTERNAL_ASSERT(t.is_contiguous(), "recv needs a contiguous tensor");
    MPI_Request req;
    check(MPI_Irecv(t.data_ptr(), count(t), mpi_type(t.scalar_type()), peer,
                    tag, comm_, &req), "recv", peer);
    return work({req}, "recv", {}, {t}, peer);
  }

  std::unique_ptr<Work> barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    return work({req}, "barrier", {}, {});
  }

  std::shared_ptr<Communicator> split(int color, int key,
                                      const std::string& name) override {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
    MpiCommOptions o;
    o.name = name;
    o.timeout = timeout_;
    auto child = std::make_shared<MpiCommunicator>(sub, o);
    if (child->size() > 1) return child;
    return make_self_communicator(name, timeout_);
  }

 private:
  static int count(const at::Tensor& t) {
    STRATA_CHECK_T(CommError, t.numel() <= INT32_MAX, "mpi backend: tensors "
                   "of more than 2^31 - 1 elements are not supported");
    return static_cast<int>(t.numel());
  }

  std::string where(const char* op, int peer) const {
    return str(op, " on group '", name_, "' (rank ", rank_, "/", size_,
               peer >= 0 ? str(", peer ", peer) : "", ", mpi)");
  }

  void check(int rc, const char* op, int peer = -1) const {
    STRATA_CHECK_T(CommError, rc == MPI_SUCCESS, where(op, peer),
                   " could not start: MPI error ", rc);
  }

  std::unique_ptr<Work> work(std::vector<MPI_Request> reqs, const char* op,
                             std::function<void()> then,
                             std::vector<at::Tensor> keep, int peer = -1) {
    return std::make_unique<MpiWork>(std::move(reqs), where(op, peer), timeout_,
                                     std::move(then), std::move(keep));
  }

  MPI_Comm comm_;
  std::string name_;
  std::chrono::milliseconds timeout_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::shared_ptr<Communicator> make_mpi_communicator(const MpiCommOptions& o) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  STRATA_CHECK_T(ConfigError, initialized, "the mpi backend needs MPI: launch "
                 "with mpirun (distributed.backend=mpi)");
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm comm;
  STRATA_CHECK_T(CommError,
                 MPI_Comm_split(MPI_COMM_WORLD, o.color,
                                o.key >= 0 ? o.key : world_rank, &comm) == MPI_SUCCESS,
                 "MPI_Comm_split for group '", o.name, "' failed");
  return std::make_shared<MpiCommunicator>(comm, o);
}

}  // namespace strata::dist
