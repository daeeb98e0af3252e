#include "trainer/data/stream.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "core/strings.h"

namespace strata::train {
namespace {

// Stream chunks made on a worker thread, handed out as slices.
class StreamSource final : public BatchSource {
 public:
  StreamSource(ChunkFn chunks, const StreamOptions& o, const StreamRequest& r)
      : chunks_(std::move(chunks)), o_(o), r_(r) {
    STRATA_INTERNAL_ASSERT(o_.instances > 0 && o_.chunk > 0 && o_.batch_size > 0);
    per_pass_ = (o_.instances + o_.chunk - 1) / o_.chunk;
    per_epoch_ = std::max<int64_t>(1, r_.batches_per_epoch);
    g_ = r_.start_batch;
    const int64_t q0 = sequence_of(begin_of(g_));
    worker_ = std::thread([this, q0] { work(q0); });
  }
  ~StreamSource() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  Batch next() override {
    const int64_t begin = begin_of(g_);
    std::vector<at::Tensor> xs, ys;
    for (int64_t p = begin; p < begin + o_.batch_size;) {
      const StreamChunk& c = chunk_at(sequence_of(p));
      const int64_t within = (p % o_.instances) % o_.chunk;
      const int64_t take = std::min(begin + o_.batch_size - p, c.targets.size(0) - within);
      xs.push_back(c.inputs.narrow(0, within, take));
      ys.push_back(c.targets.narrow(0, within, take));
      p += take;
    }
    Batch b;
    b.inputs = xs.size() == 1 ? xs[0] : at::cat(xs);
    b.targets = ys.size() == 1 ? ys[0] : at::cat(ys);
    b.epoch = g_ / per_epoch_;
    b.index = g_ % per_epoch_;
    ++g_;
    return b;
  }

 private:
  // The position of micro-batch g's first instance in the endless sequence
  // of passes: pass * instances + instance.
  int64_t begin_of(int64_t g) const {
    const int64_t within = ((g % per_epoch_) * r_.world + r_.rank) * o_.batch_size;
    return (g / per_epoch_) * o_.instances + within;
  }
  // The chunk sequence number of position p (chunks of a pass, pass after pass).
  int64_t sequence_of(int64_t p) const {
    return (p / o_.instances) * per_pass_ + (p % o_.instances) / o_.chunk;
  }

  // Chunk q, from the worker's queue (older chunks are dropped).
  const StreamChunk& chunk_at(int64_t q) {
    if (have_ && current_q_ == q) return current_;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty() || error_; });
      if (error_) std::rethrow_exception(error_);
      std::pair<int64_t, StreamChunk> front = std::move(queue_.front());
      queue_.pop_front();
      cv_.notify_all();
      STRATA_INTERNAL_ASSERT(front.first <= q, "stream chunk ", front.first, " past ", q);
      if (front.first == q) {
        current_q_ = q;
        current_ = std::move(front.second);
        have_ = true;
        return current_;
      }
    }
  }

  void work(int64_t q) {
    try {
      for (;; ++q) {
        StreamChunk c = chunks_(q % per_pass_);
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || static_cast<int64_t>(queue_.size()) < o_.prefetch; });
        if (stop_) return;
        queue_.emplace_back(q, std::move(c));
        cv_.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
      cv_.notify_all();
    }
  }

  ChunkFn chunks_;
  StreamOptions o_;
  StreamRequest r_;
  int64_t per_pass_ = 1, per_epoch_ = 1, g_ = 0;
  bool have_ = false;
  int64_t current_q_ = -1;
  StreamChunk current_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, StreamChunk>> queue_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread worker_;
};

// Note [Synthetic streams]
// ~~~~~~~~~~~~~~~~~~~~~~~~
// Sahoo et al. describe Syn8 only as "generated from a randomly initialised
// DNN with 8 hidden layers of width 100", CD1 and CD2 as concept switches
// between such networks; their generator is not published. Ours: features
// x ~ N(0, I_D); a concept is a ReLU network of `depth` hidden layers of
// width 100 with He-normal weights (N(0, 2 / fan_in)), biases N(0, 0.1^2)
// and one output z; its median m and standard deviation s are measured on
// 20,000 inputs of its own, and an instance is labelled 1 with probability
// sigmoid((z - m) / s), else 0 -- balanced classes and a Bayes error near
// 32% (E sigmoid(-|u|), u ~ N(0, 1)), in the range of the paper's ~37-41%
// online errors. Everything is drawn with the platform-independent Rng of
// core/random.h: concept k from its seed, chunk c's features and label
// draws from (stream seed, c); labels go through ATen matmuls, so they are
// exact on one machine and may differ on another where a z sits on a
// rounding edge.
constexpr int64_t kConceptWidth = 100;
constexpr int64_t kCalibration = 20000;

// n standard normals (Box-Muller over the Rng's 53-bit uniforms).
at::Tensor normals(Rng& rng, std::vector<int64_t> shape) {
  at::Tensor t = at::empty(shape, at::kFloat);
  float* p = t.data_ptr<float>();
  const int64_t n = t.numel();
  auto uniform = [&] { return (static_cast<double>(rng.next() >> 11) + 1.0) * 0x1.0p-53; };
  for (int64_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double a = 2.0 * M_PI * uniform();
    p[i] = static_cast<float>(r * std::cos(a));
    if (i + 1 < n) p[i + 1] = static_cast<float>(r * std::sin(a));
  }
  return t;
}

struct Concept {
  std::vector<at::Tensor> weights, biases;  // [out, in], [out]
  double median = 0.0, scale = 1.0;

  at::Tensor logit(const at::Tensor& x) const {
    at::Tensor h = x;
    for (size_t l = 0; l < weights.size(); ++l) {
      h = at::linear(h, weights[l], biases[l]);
      if (l + 1 < weights.size()) h = at::relu(h);
    }
    return h.squeeze(1);
  }
};

Concept make_concept(uint64_t seed, int64_t features, int64_t depth) {
  Rng rng(mix_seed(seed, 0x434f4e43 /* "CONC" */));
  Concept c;
  int64_t in = features;
  for (int64_t l = 0; l <= depth; ++l) {
    const int64_t out = l < depth ? kConceptWidth : 1;
    const double std = l < depth ? std::sqrt(2.0 / static_cast<double>(in))
                                 : std::sqrt(1.0 / static_cast<double>(in));
    c.weights.push_back(normals(rng, {out, in}) * std);
    c.biases.push_back(normals(rng, {out}) * 0.1);
    in = out;
  }
  Rng calib(mix_seed(seed, 0x43414c49 /* "CALI" */));
  const at::Tensor z = c.logit(normals(calib, {kCalibration, features})).to(at::kDouble);
  c.median = std::get<0>(z.sort()).select(0, kCalibration / 2).item<double>();
  c.scale = std::max(z.std().item<double>(), 1e-12);
  return c;
}

LoadedData stream_data(const Recipe& recipe, const std::vector<int64_t>& depths,
                       const std::vector<int64_t>& concepts) {
  const DataSection& d = recipe.data;
  constexpr int64_t kChunk = 1000;
  LoadedData out = stream_loaded(
      recipe, InputShape{1, 1, d.features, 2}, d.instances, kChunk,
      synthetic_stream(static_cast<uint64_t>(d.stream_seed), d.features, d.instances, depths,
                       concepts, kChunk));
  std::string drift;
  if (concepts.size() > 1) {
    std::vector<std::string> names;
    for (int64_t c : concepts) names.push_back(str("C", c));
    drift = str(", concepts ", join(names, "-"), " in equal shares");
  }
  out.summary = str("a stream of ", d.instances, " instances of ", d.features,
                    " features, 2 classes", drift, " (prequential: no held-out split)");
  return out;
}

}  // namespace

std::unique_ptr<BatchSource> make_stream_source(ChunkFn chunks, const StreamOptions& options,
                                                const StreamRequest& request) {
  return std::make_unique<StreamSource>(std::move(chunks), options, request);
}

LoadedData stream_loaded(const Recipe& recipe, const InputShape& shape, int64_t instances,
                         int64_t chunk, ChunkFn chunks) {
  LoadedData out;
  out.task = Task::kClassification;
  out.shape = shape;
  out.train_samples = instances;
  out.eval_split = "none";
  out.eval_samples = 0;
  out.eval_inputs = at::empty({0, shape.channels, shape.height, shape.width}, at::kFloat);
  out.eval_targets = at::empty({0}, at::kLong);
  const StreamOptions o{instances, chunk, recipe.data.batch_size, recipe.data.prefetch};
  out.stream = [chunks = std::move(chunks), o](const StreamRequest& r) {
    return make_stream_source(chunks, o, r);
  };
  return out;
}

ChunkFn synthetic_stream(uint64_t seed, int64_t features, int64_t instances,
                         const std::vector<int64_t>& concept_depths,
                         const std::vector<int64_t>& concept_seeds, int64_t chunk) {
  STRATA_INTERNAL_ASSERT(concept_depths.size() == concept_seeds.size() && !concept_seeds.empty());
  // Concepts are built once; the same seed is the same concept (CD1's C1).
  std::vector<std::shared_ptr<const Concept>> segments;
  for (size_t i = 0; i < concept_seeds.size(); ++i) {
    std::shared_ptr<const Concept> same;
    for (size_t j = 0; j < i; ++j) {
      if (concept_seeds[j] == concept_seeds[i] && concept_depths[j] == concept_depths[i]) {
        same = segments[j];
      }
    }
    segments.push_back(same ? same
                            : std::make_shared<const Concept>(make_concept(
                                  mix_seed(seed, static_cast<uint64_t>(concept_seeds[i])),
                                  features, concept_depths[i])));
  }
  const int64_t S = static_cast<int64_t>(segments.size());
  return [=](int64_t c) {
    const int64_t begin = c * chunk, end = std::min(instances, begin + chunk), n = end - begin;
    Rng rng(mix_seed(seed, static_cast<uint64_t>(c), 0x5354524d /* "STRM" */));
    StreamChunk out;
    out.inputs = normals(rng, {n, features});
    at::Tensor u = at::empty({n}, at::kDouble);
    double* up = u.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) up[i] = static_cast<double>(rng.next() >> 11) * 0x1.0p-53;
    at::Tensor p = at::empty({n}, at::kDouble);
    // Instance i belongs to segment i * S / instances.
    for (int64_t i = 0; i < n;) {
      const int64_t s = (begin + i) * S / instances;
      int64_t j = i;
      while (j < n && (begin + j) * S / instances == s) ++j;
      const Concept& k = *segments[static_cast<size_t>(s)];
      const at::Tensor z = k.logit(out.inputs.slice(0, i, j)).to(at::kDouble);
      p.slice(0, i, j).copy_(at::sigmoid((z - k.median) / k.scale));
      i = j;
    }
    out.targets = (u < p).to(at::kLong);
    return out;
  };
}

// Every rank reads the whole stream (StreamSource picks its batches).
LoadedData load_syn8(const Recipe& recipe, int, int) { return stream_data(recipe, {8}, {1}); }
LoadedData load_cd1(const Recipe& recipe, int, int) {
  return stream_data(recipe, {8, 8, 8}, {1, 2, 1});
}
LoadedData load_cd2(const Recipe& recipe, int, int) {
  return stream_data(recipe, {8, 6, 8}, {1, 2, 3});
}

}  // namespace strata::train
