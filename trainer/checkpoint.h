// Checkpoints and the final model export.
//
// A checkpoint (<run>/checkpoints/step_<N>/, Note [Sharded checkpoints])
// holds all a run needs to continue bit for bit: model parameters and
// buffers, optimizer state by parameter name, the default CPU generator
// (dropout), the optimizer step and the position in the data stream. One
// format for every layout: a run without model parallelism writes the
// 1 x 1 x 1 case (one shard, pp0-tp0), and any checkpoint resumes in any
// layout. Checkpoints of the earlier format (step_<N>.pt, one LibTorch
// archive) still load, into the model and optimizer that wrote them. The data order and augmentation need no
// state (Note [Deterministic data]); the LR schedule is a function of the step.
// Files are written atomically (Note [Atomic files]) so a run killed at any
// instant leaves only complete checkpoints behind.
//
// model.pt is a plain state dict {name: tensor} in the pickle format of
// Python's torch.save, so torch.load(path) returns a dict.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "distributed/tensor_parallel.h"
#include "trainer/optim.h"

namespace strata::train {

// Note [Sharded checkpoints]: a checkpoint is a directory step_<N>/
// holding, for each (pp, tp) coordinate <tag> = pp<p>-tp<t> (one, pp0-tp0,
// without model parallelism), written by the rank of that coordinate with
// data-parallel coordinate 0:
//   model-<tag>.pt   its parameters and buffers (local names and shapes), a
//                    torch.load-able state dict
//   train-<tag>.pt   step, data position, generator, loss scale, QAT
//                    observers (a
//                    checkpoint file without model and optimizer)
//   optim-<tag>.pt   its optimizer state by parameter name, a state dict of
//                    "<name>/<field>" (the optimizer's OptimizerStateCodec,
//                    optimizer_state_dict in optim.h)
//   split-<tag>.json how its split parameters are cut: {"name": "dim/groups"}
// and metadata.json ({"format", "step", "dp", "tp", "pp", "files": {name:
// bytes}}), which world rank 0 writes last, after every shard is on disk: a
// directory without it, or with a file cut short, is incomplete and
// skipped (Note [Complete checkpoints]). consolidate_checkpoint joins the shards into the
// full state dict (what model.pt holds).
struct ShardLayout {
  int64_t dp = 1, tp = 1, pp = 1;   // mesh sizes
  int64_t tp_rank = 0, pp_rank = 0;  // this rank's coordinates
  bool sharded() const { return tp * pp > 1; }
  std::string tag() const;  // "pp0-tp1"
};

// What a checkpoint saves and restores besides the counters.
struct Trained {
  torch::nn::Module& model;
  torch::optim::Optimizer& optimizer;
  const OptimizerStateCodec& optimizer_state;  // the optimizer's (its spec's)
  // Other trained modules the run needs back (distillation hint
  // projections), not part of the model; their optimizer state is keyed
  // "distill.hints.<name>".
  torch::nn::Module* extra = nullptr;
  // The model's tensor-parallel parameters and how each is cut.
  std::map<std::string, dist::TpShard> splits = {};
  // Quantization-aware training's observers (trainer/qat.h), in train-<tag>.pt.
  torch::nn::Module* qat = nullptr;
};

struct TrainState {
  int64_t step = 0;             // optimizer steps taken
  int64_t micro_batches = 0;    // micro-batches each rank consumed
  int64_t world = 1;            // data-parallel ranks when saved
  int64_t micro_per_epoch = 0;  // micro-batches per epoch per rank when saved
  double loss_scale = 0.0;      // fp16 dynamic loss scale (0: no scaler)
  int64_t loss_scale_growth = 0;  // clean steps since the last scale change
  // The train record's window when the checkpoint fell inside one (a stop
  // on a signal, a checkpoint by the clock): its steps so far and each
  // data-parallel rank's loss sum, so a resumed run logs that record as an
  // uninterrupted one would (bitwise in the same layout).
  int64_t window_steps = 0;
  std::vector<double> window_loss{};  // by dp rank
  // Prequential counts (trainer/prequential.h), empty without.
  std::vector<double> online{};
};

// A checkpoint shard copied out of the live model and optimizer into host
// memory (snapshot), so that a background thread can write it while
// training goes on (write; Note [Asynchronous checkpoints] in trainer.cpp).
struct CheckpointSnapshot {
  int64_t step = 0;
  std::string train_archive;  // train-<tag>.pt
  std::vector<std::pair<std::string, at::Tensor>> model, optim;
  std::string splits_json;
};

class CheckpointStore {
 public:
  // `dir` is created on first save; `keep` >= 1 newest checkpoints are kept.
  // A sharded layout writes directories (Note [Sharded checkpoints]).
  CheckpointStore(std::string dir, int64_t keep, ShardLayout layout = {});

  // Writes this rank's shard of step_<state.step>/ (every file atomically;
  // the ranks with data-parallel coordinate 0 call it) and returns the
  // directory. publish() completes it.
  std::string save(const TrainState& state, const Trained& trained) const;
  // save() in two halves: the copy (on the training thread) and the files
  // (on any thread; the store is not modified).
  CheckpointSnapshot snapshot(const TrainState& state, const Trained& trained) const;
  std::string write(const CheckpointSnapshot& snapshot) const;
  // World rank 0, once every shard of `step` is written: writes
  // metadata.json and deletes all but the newest `keep`.
  void publish(int64_t step) const;
  // One process: save and publish.
  std::string save_and_publish(const TrainState& state, const Trained& trained) const;

  // Complete checkpoints (directories, and files of the earlier format),
  // oldest first.
  std::vector<std::string> list() const;
  // The newest complete checkpoint (Note [Complete checkpoints]), or ""
  // when there is none; an incomplete later one is skipped with a warning.
  std::string newest() const;

 private:
  void prune() const;

  std::string dir_;
  int64_t keep_;
  ShardLayout layout_;
};

// Whether `path` is a published checkpoint directory (it has metadata.json).
bool is_sharded_checkpoint(const std::string& path);
// Note [Complete checkpoints]: metadata.json, written last, lists every
// file of the directory with its size; a checkpoint is complete when each
// is there at that size. Returns "" for a complete one (and for a file of
// the earlier format, written atomically), else what is wrong.
std::string incomplete_checkpoint(const std::string& path);
// The layout a checkpoint directory was written in (tp_rank, pp_rank 0).
ShardLayout sharded_checkpoint_layout(const std::string& dir);
// The full state dict of a checkpoint directory: every stage's parameters
// and buffers, split ones joined, each name once (a tied copy on a later
// stage is dropped), stage order. IoError for a missing or incomplete
// shard.
std::vector<std::pair<std::string, at::Tensor>> consolidate_checkpoint(const std::string& dir);

// Restores this rank's part: parameters, buffers, optimizer state, the
// step, data position, loss scale and generator. A directory written in
// the same layout: this rank's files as they are; in another: the
// parameters and their optimizer state consolidated and cut for this rank
// with trained.splits and `layout`, a warning saying so (distillation
// hints resume only in the same layout: ConfigError). A file of the
// earlier format: into the model and optimizer that wrote it, one process
// (ConfigError otherwise, saying how to continue). Tensors land on
// `device` (the model's), whatever device wrote them. IoError when
// unreadable, ConfigError when written for a different model or optimizer
// (the message says which).
TrainState load_checkpoint(const std::string& path, const ShardLayout& layout,
                           const Trained& trained, c10::Device device = c10::Device(c10::kCPU));

// Writes model's parameters and buffers as a torch.load-able state dict
// (atomically; tensors copied to the CPU).
void save_state_dict(const std::string& path, const torch::nn::Module& model);
// The same for (name, tensor) pairs, in their order.
void save_state_dict(const std::string& path,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// Reads a state dict (a pickled {name: tensor} dict, as save_state_dict and
// Python's torch.save(model.state_dict()) write) as (name, CPU tensor)
// pairs in its order. Throws IoError for a missing or unreadable file.
std::vector<std::pair<std::string, at::Tensor>> load_state_dict(const std::string& path);

// Fills `model`'s parameters and buffers from `saved` (load_state_dict's
// pairs) by name: every tensor the model has must be there with its shape,
// and nothing else. ConfigError naming `source` (where `saved` came from)
// and the tensor, ending with `fix` (what to do about it).
void assign_state_dict(torch::nn::Module& model,
                       const std::vector<std::pair<std::string, at::Tensor>>& saved,
                       const std::string& source, const std::string& fix);

// train.init: `model`'s weights from the recipe's model.pt (fine-tuning a
// trained model; a federation's first version). ConfigError naming the
// recipe key for a missing file or another model's weights.
void load_init_weights(torch::nn::Module& model, const Recipe& recipe);

}  // namespace strata::train
