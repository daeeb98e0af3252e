// The data seam: a dataset registers how it loads, and the trainer (and
// anything else that trains) reads only what it gives back.
//
// A dataset has a training split, read as an endless stream of
// micro-batches sharded by (rank, world) in a deterministic order (a pure
// function of the seed, the epoch and the sample: Note [Deterministic
// data]), and an evaluation split, of which each rank scores a contiguous
// shard. Built in:
//   fashion_mnist  images [B, 1, 28, 28], 10 classes (data.root)
//   text           byte-level language modelling (data.text; vocabulary 256)
//   tokens         a pre-tokenised corpus: data.tokens/{train,val}.bin of
//                  uint16 ids, memory-mapped (nanoGPT's and llm.c's format)
// Language-modelling datasets cut windows of model.seq_len tokens.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/data/loader.h"
#include "trainer/models/models.h"
#include "trainer/recipe.h"
#include "trainer/registry.h"

namespace strata::train {

// How one rank reads the training stream.
struct StreamRequest {
  int rank = 0;  // data-parallel rank and size
  int world = 1;
  int64_t batches_per_epoch = 1;  // per rank (for Batch::epoch)
  int64_t start_batch = 0;        // global micro-batch to start at (a resumed run)
  bool pin_memory = false;        // page-locked batches, for GPUs
};

// What a dataset gives the trainer.
struct LoadedData {
  Task task = Task::kClassification;
  InputShape shape;                // what the model is built for
  int64_t train_samples = 0;       // per epoch, all ranks (LM: windows)
  int64_t tokens_per_sample = 1;   // LM: model.seq_len
  std::string eval_split = "test";  // "test", "validation"
  at::Tensor eval_inputs, eval_targets;  // this rank's evaluation shard (CPU)
  int64_t eval_samples = 0;              // all ranks
  // The training stream of one rank.
  std::function<std::unique_ptr<BatchSource>(const StreamRequest&)> stream;
  // The training samples at `indices` (each in [0, train_samples)) as
  // inputs and targets, for clients that hold their share of the data in
  // memory (federated edge clients and the simulator).
  std::function<std::pair<at::Tensor, at::Tensor>(const std::vector<int64_t>& indices)>
      train_rows;
  // Classification: every training sample's class, for label-skewed
  // partitions; empty for language modelling.
  std::vector<int64_t> train_labels;
  std::string summary;  // "60000 training / 10000 test samples"
  // Images: how 8-bit pixels p became the model's inputs, (p / 255 - mean) / std
  // (for a runtime that feeds the exported model raw images); std 0: not images.
  double pixel_mean = 0.0, pixel_std = 0.0;
};

// Loads the recipe's data for the rank `rank` of `world` data-parallel
// ranks (the evaluation shard). DataError for missing data, with the fix.
using DatasetLoader =
    std::function<LoadedData(const Recipe& recipe, int rank, int world)>;

struct DatasetSpec {
  DatasetLoader load;
  Task task = Task::kClassification;
};
using DatasetRegistry = Registry<DatasetSpec>;

void register_builtin_datasets(DatasetRegistry& registry);

}  // namespace strata::train
