// parallelize(): how one rank's part of a model is laid out over the job's
// device mesh (torchtitan's parallelize_llama is the reference shape).
//
// The model does not know about the mesh: it sees a ModelPart (a tensor-
// parallel group and a range of its layer list) and its spec says what it
// can do (trainer/models/models.h). parallelize applies, in this fixed
// order:
//   1. pipeline parallelism: this rank's stage, layers [begin, end) of the
//      spec's layer list, balanced by the spec's layer weights unless the
//      plan gives the counts; a PipelineExecutor runs the schedule;
//   2. tensor parallelism: the stage is built with the tp group, so the
//      spec's split layers hold this rank's slice (LibTorch's C++ modules
//      hold their children by value, so the split is chosen when a layer is
//      built rather than swapped in afterwards, as PyTorch's
//      parallelize_module does);
//   3. activation checkpointing of the stage's units;
// and then, last, data parallelism, which TrainStep applies (its gradient
// all-reduce is part of the step's epilogue; trainer/train_step.h).
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "distributed/device_mesh.h"
#include "distributed/pipeline_executor.h"
#include "distributed/tensor_parallel.h"
#include "trainer/models/models.h"
#include "trainer/recipe.h"

namespace strata::train {

// The parallel layout of a job, read once from the recipe.
struct ParallelPlan {
  int64_t tensor_parallel = 1;
  int64_t pipeline_stages = 1;
  std::vector<int64_t> stage_layers;  // per stage; empty: balanced by weight
  std::string pipeline_schedule = "1f1b";
  int64_t microbatches = 1;
  std::string activation_checkpointing = "none";
  int64_t checkpoint_every = 1;
  // Recipe locations for messages ("recipes/a.yaml:12: "), by key.
  std::map<std::string, std::string> where;

  std::string at(const std::string& key) const;
};
ParallelPlan parallel_plan(const Recipe& recipe);

// The job's mesh: pipeline x data x tensor (tensor parallelism innermost, on
// neighbouring ranks, Megatron's order); the data-parallel size is what the
// world leaves. Collective. ConfigError when the world is not a multiple of
// tp x pp.
dist::DeviceMesh make_mesh(std::shared_ptr<dist::Communicator> world, const ParallelPlan& plan);

// One rank's part of the model and how it is laid out.
struct ParallelModel {
  std::shared_ptr<Model> model;
  ModelPart part;
  std::shared_ptr<dist::Communicator> tp, pp;  // groups (size 1: self)
  std::unique_ptr<dist::PipelineExecutor> pipe;  // pipeline stages > 1
  // Its tensor-parallel parameters and how each is cut.
  std::map<std::string, dist::TpShard> splits;
  // Pipeline: the parameters the first and last stage both hold, whose
  // gradients dist::sum_tied_gradients sums (empty without a pipeline).
  std::vector<std::string> tied;
  // Whether `name` is a tied parameter's second copy (counted on the first
  // stage, not here).
  bool tied_copy(const std::string& name) const {
    return pipe && !pipe->first() && std::find(tied.begin(), tied.end(), name) != tied.end();
  }
  bool model_parallel() const { return tp->size() * pp->size() > 1; }
  // A graph that computes the model's forward in its place over the same
  // parameters (quantization-aware training, trainer/qat.h); empty: the
  // model's own forward. Whole models only (no pipeline).
  std::function<at::Tensor(const at::Tensor&)> forward_graph;
  at::Tensor forward(const at::Tensor& x) const {
    return forward_graph ? forward_graph(x) : model->forward(x);
  }
  // Whether this rank computes the loss (the last stage, or everyone).
  bool computes_loss() const { return !pipe || pipe->last(); }
};

// Builds this rank's part of `config`'s model (seeded by the caller) and
// lays it out as above. ConfigError for a plan the spec cannot carry (a
// model without a layer list in a pipeline, without split layers under
// tensor parallelism), naming the models that can.
ParallelModel parallelize(const ModelRegistry& models, const ModelSection& config,
                          const InputShape& input, const dist::DeviceMesh& mesh,
                          const ParallelPlan& plan, const std::string& where_model);

}  // namespace strata::train
