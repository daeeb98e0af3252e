// Training batches prepared on a background thread.
//
// The loader is an endless stream of micro-batches: global batch g is batch
// g % batches_per_epoch of epoch g / batches_per_epoch. Starting at any g (a
// resumed run) yields exactly the batches the uninterrupted run saw at g,
// because order and augmentation are pure functions of (seed, epoch, sample)
// (Note [Deterministic data] in core/random.h). The last partial batch of an
// epoch is dropped so every step has the same batch size on every rank.
//
// Shape legend: B batch, C channels, H height, W width.
// Thread safety: next() is called from one thread; the worker thread only
// reads the dataset and writes the queue.
#pragma once

#include <ATen/ATen.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "trainer/data/dataset.h"
#include "trainer/data/sampler.h"

namespace strata::train {

struct Batch {
  at::Tensor inputs;   // images: float32 [B, C, H, W], normalised; text: int64 [B, T]
  at::Tensor targets;  // images: int64 [B]; text: int64 [B, T]
  int64_t epoch = 0;
  int64_t index = 0;  // micro-batch index within the epoch
};

// An endless stream of training micro-batches (images or text).
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The next micro-batch; blocks until it is ready.
  virtual Batch next() = 0;
};

struct LoaderOptions {
  int64_t batch_size = 128;  // B, > 0
  int64_t prefetch = 4;      // batches prepared ahead, > 0
  bool shuffle = true;
  uint64_t seed = 0;
  int rank = 0;  // this process's data shard
  int world = 1;
  int64_t crop_padding = 0;  // random crop after zero padding (0: off)
  bool hflip = false;        // random horizontal flip, p = 1/2
  bool pin_memory = false;   // page-locked batches (fast async copies to a GPU)
};

class TrainLoader final : public BatchSource {
 public:
  // Starts the worker at global micro-batch `start_batch`.
  TrainLoader(std::shared_ptr<const ImageDataset> data, LoaderOptions options,
              int64_t start_batch);
  ~TrainLoader();
  TrainLoader(const TrainLoader&) = delete;
  TrainLoader& operator=(const TrainLoader&) = delete;

  // The next micro-batch; blocks until it is ready. Rethrows a worker error.
  Batch next() override;
  int64_t batches_per_epoch() const { return batches_per_epoch_; }

 private:
  void work(int64_t start_batch);
  Batch make_batch(int64_t epoch, int64_t index,
                   const std::vector<int64_t>& order) const;

  std::shared_ptr<const ImageDataset> data_;
  LoaderOptions options_;
  ShardedSampler sampler_;
  int64_t batches_per_epoch_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread worker_;
};

// The whole dataset (or rows [begin, end)) as normalised tensors, for
// evaluation: images float32 [N, C, H, W], labels int64 [N].
std::pair<at::Tensor, at::Tensor> dataset_tensors(const ImageDataset& data,
                                                  int64_t begin, int64_t end);
// The same for the samples at `indices`, in that order.
std::pair<at::Tensor, at::Tensor> dataset_rows(const ImageDataset& data,
                                               const std::vector<int64_t>& indices);

}  // namespace strata::train
