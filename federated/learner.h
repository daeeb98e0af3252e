// What an edge client computes: an update from the global model and its
// local data. No networking here (see client.h).
//
// Shape legend: N samples, C channels, H height, W width.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "federated/layout.h"
#include "trainer/data/dataset.h"
#include "trainer/models/models.h"

namespace strata::fed {

// A client's samples as normalised tensors: images [N, C, H, W], labels [N].
struct LocalData {
  at::Tensor images;
  at::Tensor labels;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};
LocalData local_data(const train::ImageDataset& data, const std::vector<int64_t>& indices);

struct LearnOptions {
  double lr = 0.05;
  double momentum = 0.0;
  double weight_decay = 0.0;
  int64_t batch_size = 32;
  double proximal_mu = 0.0;  // FedProx
  uint64_t seed = 0;
};

struct LocalResult {
  at::Tensor delta;         // flat float32: trained state - global state
  int64_t num_samples = 0;  // samples learned from
  double mean_loss = 0.0;   // over the mini-batches, before each step
};

// Sync mode: `epochs` passes over `data` (reshuffled per epoch from seed and
// `round`), starting from `global`. Momentum starts from zero.
LocalResult train_local_epochs(train::Model& model, const TensorLayout& layout,
                               const at::Tensor& global, const LocalData& data,
                               int64_t epochs, int64_t round, const LearnOptions& o);

// An endless stream of a client's samples, as online data arrives: the
// local data in a fresh seeded order on every pass.
class SampleStream {
 public:
  SampleStream(LocalData data, uint64_t seed);
  // The next `n` samples (n <= size()).
  LocalData next(int64_t n);
  int64_t consumed() const { return consumed_; }

 private:
  LocalData data_;
  uint64_t seed_;
  at::Tensor order_;
  int64_t pass_ = -1;
  int64_t pos_ = 0;
  int64_t consumed_ = 0;
};

// Async mode: online gradient descent, one step per mini-batch, a single
// pass over the next `samples` samples of the stream, starting from `global`.
LocalResult learn_online(train::Model& model, const TensorLayout& layout,
                         const at::Tensor& global, SampleStream& stream, int64_t samples,
                         const LearnOptions& o);

}  // namespace strata::fed
