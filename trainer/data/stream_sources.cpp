// Streams from data: a recorded stream file, and Fashion-MNIST as a
// drifting stream (trainer/data/stream.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fs.h"
#include "core/random.h"
#include "core/strings.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/data/sampler.h"
#include "trainer/data/stream.h"

namespace strata::train {
namespace {

constexpr int64_t kChunk = 1000;

// A stream of in-memory rows, chunk after chunk.
LoadedData rows_stream(const Recipe& recipe, at::Tensor inputs, at::Tensor targets,
                       const InputShape& shape, std::string summary) {
  const int64_t n = targets.size(0);
  LoadedData out = stream_loaded(recipe, shape, n, kChunk, [inputs, targets, n](int64_t c) {
    const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
    return StreamChunk{inputs.slice(0, begin, end), targets.slice(0, begin, end)};
  });
  out.train_rows = [inputs, targets](const std::vector<int64_t>& indices) {
    const at::Tensor idx = at::tensor(indices, at::kLong);
    return std::make_pair(inputs.index_select(0, idx), targets.index_select(0, idx));
  };
  const at::Tensor labels = targets.contiguous();
  out.train_labels.assign(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
  out.summary = std::move(summary);
  return out;
}

}  // namespace

// Note [Stream files]
// ~~~~~~~~~~~~~~~~~~~
// A recorded stream, little-endian: the 8 bytes "SSTREAM1", uint32 features
// F, uint32 classes K, then rows to the end of the file, each F float32
// features and one int32 label in [0, K) (numpy: np.dtype([("x", "<f4",
// (F,)), ("y", "<i4")])). Read whole and checked before training starts: a
// short or ragged file, a label out of range or a non-finite feature is a
// DataError naming the row.
LoadedData load_stream_file(const Recipe& recipe, int, int) {
  const DataSection& d = recipe.data;
  const std::string where = recipe.where("data.stream_file");
  STRATA_CHECK_T(ConfigError, !d.stream_file.empty(), where,
                 "data.name=stream_file needs data.stream_file: a recorded stream (\"SSTREAM1\", "
                 "uint32 features, uint32 classes, then float32 features + int32 label per row; "
                 "recipes/README.md)");
  STRATA_CHECK_T(DataError, path_exists(d.stream_file), where, "data.stream_file = '",
                 d.stream_file, "' does not exist");
  const std::string bytes = read_file(d.stream_file);
  const std::string name = str("stream file '", d.stream_file, "'");
  STRATA_CHECK_T(DataError, bytes.size() >= 16 && bytes.compare(0, 8, "SSTREAM1") == 0, name,
                 " does not start with the header \"SSTREAM1\" + uint32 features + uint32 "
                 "classes (", bytes.size(), " bytes)");
  uint32_t f = 0, k = 0;
  std::memcpy(&f, bytes.data() + 8, 4);
  std::memcpy(&k, bytes.data() + 12, 4);
  STRATA_CHECK_T(DataError, f >= 1 && f <= (1u << 24) && k >= 2 && k <= (1u << 20), name,
                 " declares ", f, " features and ", k, " classes; need 1..2^24 features and "
                 "2..2^20 classes");
  const int64_t F = f, K = k, row = 4 * F + 4;
  const int64_t body = static_cast<int64_t>(bytes.size()) - 16;
  STRATA_CHECK_T(DataError, body >= row && body % row == 0, name, " holds ", body,
                 " bytes of rows, not a positive multiple of the row size ", row, " (", F,
                 " float32 features + an int32 label); the file is cut short or not this format");
  int64_t n = body / row;
  if (d.train_subset > 0) n = std::min(n, d.train_subset);
  at::Tensor inputs = at::empty({n, F}, at::kFloat);
  at::Tensor targets = at::empty({n}, at::kLong);
  float* x = inputs.data_ptr<float>();
  int64_t* y = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const char* r = bytes.data() + 16 + i * row;
    std::memcpy(x + i * F, r, static_cast<size_t>(4 * F));
    int32_t label = 0;
    std::memcpy(&label, r + 4 * F, 4);
    STRATA_CHECK_T(DataError, label >= 0 && label < K, name, ": row ", i, " has label ", label,
                   ", outside [0, ", K, ")");
    for (int64_t j = 0; j < F; ++j) {
      STRATA_CHECK_T(DataError, std::isfinite(x[i * F + j]), name, ": row ", i, " feature ", j,
                     " is ", x[i * F + j]);
    }
    y[i] = label;
  }
  return rows_stream(recipe, inputs, targets, InputShape{1, 1, F, K},
                     str(n, " instances of ", F, " features, ", K, " classes from ",
                         d.stream_file, " (prequential: no held-out split)"));
}

ConceptDrift::ConceptDrift(bool rotate, int64_t classes, int64_t concepts, uint64_t seed)
    : rotate_(rotate), concepts_(concepts) {
  STRATA_INTERNAL_ASSERT(concepts >= 1 && classes >= 1);
  for (int64_t c = 1; !rotate && c < concepts; ++c) {
    at::Generator gen =
        at::detail::createCPUGenerator(mix_seed(seed, 0x5045524d, static_cast<uint64_t>(c)));
    perms_.push_back(at::randperm(classes, gen, at::kLong));
  }
}

void ConceptDrift::apply(at::Tensor& inputs, at::Tensor& targets,
                         const std::vector<int64_t>& concept) const {
  STRATA_INTERNAL_ASSERT(static_cast<int64_t>(concept.size()) == targets.size(0) &&
                         targets.scalar_type() == at::kLong && targets.is_contiguous());
  int64_t* y = targets.data_ptr<int64_t>();
  for (size_t i = 0; i < concept.size(); ++i) {
    const int64_t k = concept[i];
    STRATA_INTERNAL_ASSERT(k >= 0 && k < concepts_);
    if (k == 0) continue;
    const auto row = static_cast<int64_t>(i);
    if (rotate_) {
      inputs[row].copy_(at::rot90(inputs[row], k % 4, {1, 2}));
    } else {
      y[i] = perms_[static_cast<size_t>(k - 1)].data_ptr<int64_t>()[y[i]];
    }
  }
}

// Note [Drifting Fashion-MNIST]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// All 70,000 Fashion-MNIST images (training then test split) as a stream of
// data.instances: pass p is a fresh permutation of them (seeded by
// data.stream_seed and p). Concept c (the number of data.drift_at points
// an instance is past) is a function of the image and label: permute maps
// label y to pi_c(y), pi_0 the identity and pi_c a seeded permutation;
// rotate turns the image by c x 90 degrees (exact). With data.drift_width
// w > 0, instance i in [t, t + w) of a drift at t takes concept c with
// probability (i - t) / w, else c - 1 (a seeded draw per instance).
LoadedData load_fmnist_drift(const Recipe& recipe, int, int) {
  const DataSection& d = recipe.data;
  for (size_t i = 0; i < d.drift_at.size(); ++i) {
    STRATA_CHECK_T(ConfigError, i == 0 || d.drift_at[i] > d.drift_at[i - 1],
                   recipe.where("data.drift_at"), "data.drift_at must increase; entry ", i,
                   " (", d.drift_at[i], ") is not after ", d.drift_at[i - 1]);
    STRATA_CHECK_T(ConfigError, d.drift_at[i] < d.instances, recipe.where("data.drift_at"),
                   "data.drift_at entry ", d.drift_at[i], " is not inside the stream of "
                   "data.instances = ", d.instances);
  }
  auto train = std::make_shared<const ImageDataset>(load_fashion_mnist(d.root, Split::kTrain));
  const ImageDataset test = load_fashion_mnist(d.root, Split::kTest);
  auto [x_train, y_train] = dataset_tensors(*train, 0, train->size);
  auto [x_test, y_test] = dataset_tensors(test, 0, test.size);
  const at::Tensor images = at::cat({x_train, x_test});
  const at::Tensor labels = at::cat({y_train, y_test});
  const int64_t pool = labels.size(0), K = train->classes, n = d.instances;
  const uint64_t seed = static_cast<uint64_t>(d.stream_seed);
  const std::vector<int64_t> drift_at = d.drift_at;
  const int64_t width = d.drift_width;
  const bool rotate = d.drift == "rotate";
  const ConceptDrift drift(rotate, K, static_cast<int64_t>(drift_at.size()) + 1, seed);
  const ShardedSampler sampler(SamplerOptions{pool, 0, 1, true, seed});
  const ChunkFn chunks = [=](int64_t c) {
    const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk), m = end - begin;
    std::vector<int64_t> index(static_cast<size_t>(m));
    std::vector<int64_t> concept_of(static_cast<size_t>(m));
    std::vector<int64_t> order;
    int64_t pass = -1;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t at = begin + i;
      if (at / pool != pass) {
        pass = at / pool;
        order = sampler.epoch_indices(pass);
      }
      index[static_cast<size_t>(i)] = order[static_cast<size_t>(at % pool)];
      int64_t concept = 0;
      for (int64_t t : drift_at) {
        if (at < t) break;
        if (at < t + width) {
          Rng r(mix_seed(seed, 0x47524144, static_cast<uint64_t>(at)));
          const double u = static_cast<double>(r.next() >> 11) * 0x1.0p-53;
          if (u >= static_cast<double>(at - t) / static_cast<double>(width)) break;
        }
        ++concept;
      }
      concept_of[static_cast<size_t>(i)] = concept;
    }
    const at::Tensor idx = at::tensor(index, at::kLong);
    at::Tensor x = images.index_select(0, idx);
    at::Tensor y = labels.index_select(0, idx);
    drift.apply(x, y, concept_of);
    return StreamChunk{x, y};
  };
  LoadedData out = stream_loaded(
      recipe, InputShape{train->channels, train->height, train->width, K}, n, kChunk, chunks);
  out.pixel_mean = train->mean;
  out.pixel_std = train->std;
  std::vector<std::string> points;
  for (int64_t t : drift_at) points.push_back(std::to_string(t));
  out.summary = str(n, " instances from the 70000 Fashion-MNIST images, ",
                    drift_at.empty() ? std::string("no drift")
                                     : str(d.drift, " drift at ", join(points, ", "),
                                           width > 0 ? str(" over ", width, " instances each")
                                                     : std::string(" (abrupt)")),
                    " (prequential: no held-out split)");
  return out;
}

}  // namespace strata::train
