// Data-parallel gradient averaging with bucketed, overlapped all-reduce: the
// C++ counterpart of PyTorch's DistributedDataParallel reducer.
//
// Parameters are packed into flat buckets in reverse registration order (the
// order backward roughly produces their gradients), each up to
// bucket_cap_bytes (the first one smaller, so communication starts early).
// A hook on every parameter copies its gradient into its bucket as soon as
// autograd computes it; when a bucket is full its all-reduce is launched
// asynchronously while backward continues. Buckets are launched strictly in
// bucket order, so every rank issues the same sequence of collectives even if
// autograd's order differs between ranks. finish() waits for all buckets and
// writes the averaged gradients back into param.grad().
//
// Gradient accumulation: inside a NoSync scope hooks do nothing and
// gradients accumulate locally in param.grad(); the next synchronised
// backward communicates the accumulated sum once.
//
// Unused parameters (no gradient this step) are an error naming them, unless
// allow_unused: then their bucket slots are zero and the buckets launch in
// finish(), still in order on every rank.
//
// Thread safety: hooks run on the autograd thread; use one reducer from one
// training thread. finish() is a collective over the communicator.
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "distributed/communicator.h"

namespace strata::dist {

enum class CommHook {
  kNone,  // all-reduce in the gradients' dtype
  kFp16,  // cast buckets to float16 for the all-reduce (half the bytes)
  kBf16,  // cast buckets to bfloat16
};

struct GradientReducerOptions {
  int64_t bucket_cap_bytes = 25 << 20;  // bucket capacity (PyTorch: 25 MiB)
  int64_t first_bucket_bytes = 1 << 20; // first bucket's capacity (1 MiB);
                                        // with overlap off, bucket_cap_bytes
  bool overlap = true;      // false: launch all buckets in finish()
  bool allow_unused = false;  // tolerate parameters that get no gradient
  CommHook hook = CommHook::kNone;
};

class GradientReducer {
 public:
  // `params` in registration order, with names for messages. Registers hooks
  // on the parameters; they stay registered for the reducer's lifetime.
  GradientReducer(std::vector<std::pair<std::string, at::Tensor>> params,
                  std::shared_ptr<Communicator> comm,
                  GradientReducerOptions options);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Collective. After a synchronised backward: waits for every bucket and
  // stores the average over ranks in each param.grad(). Throws ConfigError
  // for unused parameters (unless allowed) and CommError on failure.
  void finish();

  // While alive, backward passes accumulate locally without communicating.
  class NoSync {
   public:
    explicit NoSync(GradientReducer& r) : r_(r) { r_.sync_ = false; }
    ~NoSync() { r_.sync_ = true; }

   private:
    GradientReducer& r_;
  };

  struct BucketInfo {
    std::vector<size_t> params;  // indices into the constructor's list
    int64_t bytes = 0;
    // Parameters whose hooks had fired when this bucket's all-reduce was
    // launched in the last step (instrumentation for the overlap test).
    int64_t hooks_before_launch = -1;
  };
  const std::vector<BucketInfo>& buckets() const { return info_; }

 private:
  struct Bucket;
  void on_grad(size_t param, const at::Tensor& grad);
  void launch_ready();
  void launch(size_t b);
  void reset_step();

  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::shared_ptr<Communicator> comm_;
  GradientReducerOptions options_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<BucketInfo> info_;
  std::vector<size_t> bucket_of_;   // param -> bucket
  std::vector<int64_t> offset_of_;  // param -> element offset in its bucket
  std::vector<bool> ready_;         // param got its gradient this step
  std::vector<unsigned> hook_ids_;
  size_t next_launch_ = 0;
  int64_t hooks_fired_ = 0;
  bool sync_ = true;
  bool active_ = false;  // a synchronised backward has started
};

// Collective. Copies root's parameters and buffers into every rank's module.
void broadcast_parameters(torch::nn::Module& module, Communicator& comm,
                          int root = 0);
// Collective. Copies root's buffers (e.g. BatchNorm statistics) to all ranks.
void broadcast_buffers(torch::nn::Module& module, Communicator& comm,
                       int root = 0);

}  // namespace strata::dist
