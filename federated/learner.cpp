#include "federated/learner.h"

#include <torch/torch.h>

#include "core/error.h"
#include "core/random.h"
#include "trainer/data/loader.h"

namespace strata::fed {
namespace {

// SGD over the given mini-batches from `global`; the FedProx term adds
// mu (w - w_global) to each parameter's gradient.
template <class NextBatch>
LocalResult sgd_from(train::Model& model, const TensorLayout& layout, const at::Tensor& global,
                     int64_t steps, const LearnOptions& o, NextBatch next_batch) {
  namespace F = torch::nn::functional;
  layout.load_into(model, global);
  model.train();
  std::vector<at::Tensor> params, anchors;
  for (auto& p : model.parameters()) {
    params.push_back(p);
    if (o.proximal_mu > 0) anchors.push_back(p.detach().clone());
  }
  torch::optim::SGD opt(params, torch::optim::SGDOptions(o.lr)
                                    .momentum(o.momentum)
                                    .weight_decay(o.weight_decay));
  LocalResult r;
  double loss_sum = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const LocalData b = next_batch(s);
    opt.zero_grad();
    at::Tensor loss = F::cross_entropy(model.forward(b.images), b.labels);
    loss.backward();
    if (o.proximal_mu > 0) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].mutable_grad().add_(params[i].detach() - anchors[i], o.proximal_mu);
      }
    }
    opt.step();
    loss_sum += loss.item<double>();
    r.num_samples += b.size();
  }
  r.mean_loss = steps > 0 ? loss_sum / static_cast<double>(steps) : 0.0;
  r.delta = layout.flatten(model) - global;
  return r;
}

LocalData rows(const LocalData& d, const at::Tensor& idx) {
  return {d.images.index_select(0, idx), d.labels.index_select(0, idx)};
}

at::Tensor permutation(int64_t n, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randperm(n, gen, at::kLong);
}

}  // namespace

LocalData local_data(const train::ImageDataset& data, const std::vector<int64_t>& indices) {
  train::ImageDataset sub;
  sub.channels = data.channels;
  sub.height = data.height;
  sub.width = data.width;
  sub.classes = data.classes;
  sub.mean = data.mean;
  sub.std = data.std;
  sub.size = static_cast<int64_t>(indices.size());
  const int64_t sb = data.sample_bytes();
  sub.pixels.resize(sub.size * sb);
  sub.labels.resize(sub.size);
  for (int64_t i = 0; i < sub.size; ++i) {
    const int64_t s = indices[i];
    STRATA_INTERNAL_ASSERT(s >= 0 && s < data.size);
    std::copy_n(data.pixels.begin() + s * sb, sb, sub.pixels.begin() + i * sb);
    sub.labels[i] = data.labels[s];
  }
  auto [x, y] = train::dataset_tensors(sub, 0, sub.size);
  return {x, y};
}

LocalResult train_local_epochs(train::Model& model, const TensorLayout& layout,
                               const at::Tensor& global, const LocalData& data,
                               int64_t epochs, int64_t round, const LearnOptions& o) {
  const int64_t n = data.size();
  STRATA_CHECK_T(DataError, n > 0, "a client without samples cannot train");
  const int64_t per_epoch = (n + o.batch_size - 1) / o.batch_size;
  at::Tensor order;
  return sgd_from(model, layout, global, epochs * per_epoch, o, [&](int64_t s) {
    const int64_t epoch = s / per_epoch, i = s % per_epoch;
    if (i == 0) order = permutation(n, mix_seed(o.seed, static_cast<uint64_t>(round), static_cast<uint64_t>(epoch)));
    return rows(data, order.slice(0, i * o.batch_size, std::min(n, (i + 1) * o.batch_size)));
  });
}

SampleStream::SampleStream(LocalData data, uint64_t seed) : data_(std::move(data)), seed_(seed) {
  STRATA_CHECK_T(DataError, data_.size() > 0, "a client without samples has no stream");
}

LocalData SampleStream::next(int64_t n) {
  STRATA_INTERNAL_ASSERT(n >= 1 && n <= data_.size());
  std::vector<at::Tensor> parts;
  int64_t need = n;
  while (need > 0) {
    if (pass_ < 0 || pos_ == data_.size()) {
      ++pass_;
      pos_ = 0;
      order_ = permutation(data_.size(), mix_seed(seed_, static_cast<uint64_t>(pass_)));
    }
    const int64_t take = std::min(need, data_.size() - pos_);
    parts.push_back(order_.slice(0, pos_, pos_ + take));
    pos_ += take;
    need -= take;
  }
  consumed_ += n;
  return rows(data_, at::cat(parts));
}

LocalResult learn_online(train::Model& model, const TensorLayout& layout,
                         const at::Tensor& global, SampleStream& stream, int64_t samples,
                         const LearnOptions& o) {
  const int64_t steps = (samples + o.batch_size - 1) / o.batch_size;
  int64_t left = samples;
  return sgd_from(model, layout, global, steps, o, [&](int64_t) {
    const int64_t b = std::min(left, o.batch_size);
    left -= b;
    return stream.next(b);
  });
}

}  // namespace strata::fed
