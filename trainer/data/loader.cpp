#include "trainer/data/loader.h"

#include <numeric>

#include "core/error.h"
#include "core/random.h"

namespace strata::train {
namespace {

// Writes sample `src` (C x H x W uint8) into `dst` (C x H x W float),
// normalised, after an optional random crop-with-padding and flip drawn from
// `rng`. Padding is zero in pixel space, as torchvision's RandomCrop.
void augment_into(const ImageDataset& d, const uint8_t* src, float* dst,
                  int64_t pad, bool hflip, Rng& rng) {
  const int64_t H = d.height, W = d.width;
  const int64_t dy = pad > 0 ? static_cast<int64_t>(rng.below(2 * pad + 1)) - pad : 0;
  const int64_t dx = pad > 0 ? static_cast<int64_t>(rng.below(2 * pad + 1)) - pad : 0;
  const bool flip = hflip && (rng.next() & 1);
  const auto [scale, shift] = pixel_affine(d.mean, d.std);
  for (int64_t c = 0; c < d.channels; ++c) {
    const uint8_t* s = src + c * H * W;
    float* o = dst + c * H * W;
    for (int64_t y = 0; y < H; ++y) {
      const int64_t sy = y + dy;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t sx = (flip ? W - 1 - x : x) + dx;
        const bool inside = sy >= 0 && sy < H && sx >= 0 && sx < W;
        const float v = inside ? s[sy * W + sx] : 0.f;
        o[y * W + x] = v * scale + shift;
      }
    }
  }
}

}  // namespace

TrainLoader::TrainLoader(std::shared_ptr<const ImageDataset> data,
                         LoaderOptions options, int64_t start_batch)
    : data_(std::move(data)),
      options_(options),
      sampler_(SamplerOptions{data_->size, options.rank, options.world,
                              options.shuffle, options.seed}) {
  batches_per_epoch_ = sampler_.samples_per_rank() / options_.batch_size;
  STRATA_CHECK_T(ConfigError, batches_per_epoch_ >= 1,
                 "data.batch_size=", options_.batch_size, " is larger than "
                 "the ", sampler_.samples_per_rank(), " training samples each "
                 "of the ", options_.world, " rank(s) reads per epoch; lower "
                 "data.batch_size or raise data.train_subset");
  STRATA_CHECK_T(ConfigError, options_.prefetch >= 1,
                 "data.prefetch must be >= 1");
  worker_ = std::thread([this, start_batch] { work(start_batch); });
}

TrainLoader::~TrainLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

Batch TrainLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  cv_.notify_all();
  return b;
}

void TrainLoader::work(int64_t start_batch) {
  try {
    int64_t cached_epoch = -1;
    std::vector<int64_t> order;
    for (int64_t g = start_batch;; ++g) {
      const int64_t epoch = g / batches_per_epoch_;
      if (epoch != cached_epoch) {
        order = sampler_.epoch_indices(epoch);
        cached_epoch = epoch;
      }
      Batch b = make_batch(epoch, g % batches_per_epoch_, order);
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ || static_cast<int64_t>(queue_.size()) < options_.prefetch;
      });
      if (stop_) return;
      queue_.push_back(std::move(b));
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

Batch TrainLoader::make_batch(int64_t epoch, int64_t index,
                              const std::vector<int64_t>& order) const {
  const ImageDataset& d = *data_;
  const int64_t B = options_.batch_size;
  Batch b;
  b.epoch = epoch;
  b.index = index;
  const auto pinned = at::TensorOptions().pinned_memory(options_.pin_memory);
  b.inputs = at::empty({B, d.channels, d.height, d.width}, pinned.dtype(at::kFloat));
  b.targets = at::empty({B}, pinned.dtype(at::kLong));
  float* img = b.inputs.data_ptr<float>();
  int64_t* lab = b.targets.data_ptr<int64_t>();
  const int64_t sb = d.sample_bytes();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t s = order[static_cast<size_t>(index * B + i)];
    Rng rng(mix_seed(options_.seed, static_cast<uint64_t>(epoch),
                     static_cast<uint64_t>(s)));
    augment_into(d, d.pixels.data() + s * sb, img + i * sb,
                 options_.crop_padding, options_.hflip, rng);
    lab[i] = d.labels[static_cast<size_t>(s)];
  }
  return b;
}

std::pair<at::Tensor, at::Tensor> dataset_rows(const ImageDataset& d,
                                               const std::vector<int64_t>& indices) {
  const int64_t n = static_cast<int64_t>(indices.size());
  at::Tensor images = at::empty({n, d.channels, d.height, d.width}, at::kFloat);
  at::Tensor labels = at::empty({n}, at::kLong);
  const int64_t sb = d.sample_bytes();
  Rng unused(0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = indices[static_cast<size_t>(i)];
    STRATA_INTERNAL_ASSERT(0 <= s && s < d.size, "sample ", s, " of ", d.size);
    augment_into(d, d.pixels.data() + s * sb, images.data_ptr<float>() + i * sb, 0, false,
                 unused);
    labels.data_ptr<int64_t>()[i] = d.labels[static_cast<size_t>(s)];
  }
  return {images, labels};
}

std::pair<at::Tensor, at::Tensor> dataset_tensors(const ImageDataset& d,
                                                  int64_t begin, int64_t end) {
  STRATA_INTERNAL_ASSERT(0 <= begin && begin <= end && end <= d.size);
  std::vector<int64_t> indices(static_cast<size_t>(end - begin));
  std::iota(indices.begin(), indices.end(), begin);
  return dataset_rows(d, indices);
}

}  // namespace strata::train
