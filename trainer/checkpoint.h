// Checkpoints and the final model export.
//
// A checkpoint (<run>/checkpoints/step_<N>.pt, a LibTorch archive) holds all
// a run needs to continue bit for bit: model parameters and buffers,
// optimizer state, the default CPU generator (dropout), the optimizer step and
// the position in the data stream. The data order and augmentation need no
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
#include <string>
#include <vector>

namespace strata::train {

struct TrainState {
  int64_t step = 0;             // optimizer steps taken
  int64_t micro_batches = 0;    // micro-batches each rank consumed
  int64_t world = 1;            // data-parallel ranks when saved
  int64_t micro_per_epoch = 0;  // micro-batches per epoch per rank when saved
  double loss_scale = 0.0;      // fp16 dynamic loss scale (0: no scaler)
  int64_t loss_scale_growth = 0;  // clean steps since the last scale change
};

class CheckpointStore {
 public:
  // `dir` is created on first save; `keep` >= 1 newest files are kept.
  CheckpointStore(std::string dir, int64_t keep);

  // Writes step_<state.step>.pt atomically, then deletes all but the newest
  // `keep`. Returns the path written. `extra`: other trained modules the
  // run needs back (distillation hint projections), not part of the model.
  std::string save(const TrainState& state, torch::nn::Module& model,
                   torch::optim::Optimizer& optimizer,
                   torch::nn::Module* extra = nullptr) const;

  // Complete checkpoints, oldest first (full paths).
  std::vector<std::string> list() const;
  // The newest complete checkpoint, or "" when there is none.
  std::string newest() const;

 private:
  std::string dir_;
  int64_t keep_;
};

// Restores `model`, `optimizer`, `extra` (as saved) and the generator from `path`. Throws
// IoError when the file is unreadable, ConfigError when it was written for a
// different model or optimizer (the message says which). Tensors land on
// `device` (the model's), whatever device wrote them: a GPU run resumes on
// the CPU and the other way round.
TrainState load_checkpoint(const std::string& path, torch::nn::Module& model,
                           torch::optim::Optimizer& optimizer,
                           c10::Device device = c10::Device(c10::kCPU),
                           torch::nn::Module* extra = nullptr);

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

}  // namespace strata::train
