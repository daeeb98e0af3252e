// Online streams: instances that arrive in order, learned from in one pass
// (prequential: each one is predicted before it is trained on).
//
// A stream is a pure function from a chunk number to that chunk's
// instances (Note [Deterministic data] in core/random.h), so a resumed run,
// or a rank of a data-parallel one, sees exactly the instances the
// uninterrupted run saw at its position. Built in (registered as datasets):
//   syn8   labels from one random 8-hidden-layer ReLU network over
//          data.features Gaussian features (Sahoo et al. 2018's Syn8)
//   cd1    concept drift: concepts C1, C2, C1 in thirds of the stream
//   cd2    concept drift: C1, C2, C3, with C2 a 6-hidden-layer network
//   fmnist_drift  Fashion-MNIST's images in seeded passes, labels permuted
//          or images rotated anew at data.drift_at (abrupt or gradual)
//   stream_file   a recorded stream (float32 features, int32 labels)
// Note [Synthetic streams] in stream.cpp says how a concept labels.
//
// Shape legend: N instances of a chunk, D features.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>

#include "trainer/data/datasets.h"

namespace strata::train {

// Instances [c * chunk, min((c + 1) * chunk, instances)) of a stream:
// inputs float32 [N, ...], targets int64 [N].
struct StreamChunk {
  at::Tensor inputs;
  at::Tensor targets;
};
using ChunkFn = std::function<StreamChunk(int64_t c)>;

struct StreamOptions {
  int64_t instances = 0;    // one pass
  int64_t chunk = 1000;     // instances per ChunkFn call
  int64_t batch_size = 1;   // instances per micro-batch
  int64_t prefetch = 4;     // chunks prepared ahead by the worker thread
};

// A rank's batches of a stream, in order: its micro-batch g holds instances
// [((g mod per_epoch) * world + rank) * B, ... + B) of pass g / per_epoch
// (a pass after the first repeats the stream). Chunks are made on a worker
// thread; next() slices them, with no per-batch copy or allocation beyond
// the slice.
std::unique_ptr<BatchSource> make_stream_source(ChunkFn chunks, const StreamOptions& options,
                                                const StreamRequest& request);

// What a classification stream gives the trainer: `instances` in one pass
// in batches sliced from `chunks` (of `chunk` instances each, made ahead on
// a worker thread), and no evaluation split (it is scored prequentially).
// The caller adds the summary and anything else it has.
LoadedData stream_loaded(const Recipe& recipe, const InputShape& shape, int64_t instances,
                         int64_t chunk, ChunkFn chunks);

// The synthetic streams' loaders (DatasetSpec::load).
LoadedData load_syn8(const Recipe& recipe, int rank, int world);
LoadedData load_cd1(const Recipe& recipe, int rank, int world);
LoadedData load_cd2(const Recipe& recipe, int rank, int world);
// A recorded stream (data.stream_file; Note [Stream files] in stream_sources.cpp).
LoadedData load_stream_file(const Recipe& recipe, int rank, int world);
// Fashion-MNIST's 70,000 images as a stream with concept drift at
// data.drift_at (Note [Drifting Fashion-MNIST]).
LoadedData load_fmnist_drift(const Recipe& recipe, int rank, int world);

// Concept drift of classification instances (Note [Drifting Fashion-MNIST]
// in stream_sources.cpp): concept 0 is the data as it is; concept k > 0
// maps label y to pi_k(y), a permutation seeded by `seed` and k (permute),
// or turns the image by k x 90 degrees (rotate; square images). Used by
// fmnist_drift and by the federated simulation's drifting client streams.
class ConceptDrift {
 public:
  ConceptDrift(bool rotate, int64_t classes, int64_t concepts, uint64_t seed);
  int64_t concepts() const { return concepts_; }
  // In place: instance i of `inputs` [N, C, H, W] and `targets` [N] (int64)
  // takes concept[i] (< concepts()).
  void apply(at::Tensor& inputs, at::Tensor& targets, const std::vector<int64_t>& concept) const;

 private:
  bool rotate_;
  int64_t concepts_;
  std::vector<at::Tensor> perms_;  // pi_1 .. pi_{concepts-1} (permute)
};

// One synthetic stream as a chunk function (tests; the loaders use it):
// `concepts` ReLU networks of the given depths over `features` inputs, each
// labelling an equal consecutive share of `instances`.
ChunkFn synthetic_stream(uint64_t seed, int64_t features, int64_t instances,
                         const std::vector<int64_t>& concept_depths,
                         const std::vector<int64_t>& concept_seeds, int64_t chunk);

}  // namespace strata::train
