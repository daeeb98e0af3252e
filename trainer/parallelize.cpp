#include "trainer/parallelize.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"
#include "trainer/activation_checkpoint.h"

namespace strata::train {
namespace {

std::vector<std::string> as_strings(const std::vector<int64_t>& v) {
  std::vector<std::string> out;
  for (int64_t x : v) out.push_back(std::to_string(x));
  return out;
}

std::string or_none(const std::vector<std::string>& names) {
  return names.empty() ? std::string("none is registered") : join(names, ", ");
}

// Stage s's layers [begin, end) of the spec's layer list.
ModelPart stage_part(const ModelSpec& spec, const ModelSection& config, const InputShape& input,
                     const ParallelPlan& plan, int stage, int64_t* layer_count) {
  const std::vector<int64_t> weights = spec.layer_weights(config, input);
  const int64_t stages = plan.pipeline_stages;
  *layer_count = static_cast<int64_t>(weights.size());
  std::vector<int64_t> counts = plan.stage_layers;
  if (counts.empty()) {
    counts = dist::partition_layers(weights, static_cast<int>(stages));
  } else {
    const int64_t sum = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    const bool ok = static_cast<int64_t>(counts.size()) == stages &&
                    *std::min_element(counts.begin(), counts.end()) >= 1 &&
                    sum == *layer_count;
    STRATA_CHECK_T(ConfigError, ok, plan.at("distributed.pipeline_parallel.layers"),
                   "distributed.pipeline_parallel.layers = [", join(as_strings(counts), ", "),
                   "] must give each of the ", stages, " stages at least one of the ",
                   *layer_count, " layers (", spec.layer_list, ") and sum to ", *layer_count,
                   "; or leave it empty to balance by parameters");
  }
  ModelPart part;
  for (int i = 0; i < stage; ++i) part.layer_begin += counts[i];
  part.layer_end = part.layer_begin + counts[stage];
  return part;
}

}  // namespace

std::string ParallelPlan::at(const std::string& key) const {
  auto it = where.find(key);
  return it == where.end() ? std::string() : it->second;
}

ParallelPlan parallel_plan(const Recipe& r) {
  ParallelPlan p;
  const PipelineSection& pp = r.distributed.pipeline_parallel;
  p.tensor_parallel = r.distributed.tensor_parallel;
  p.pipeline_stages = pp.stages;
  p.stage_layers = pp.layers;
  p.pipeline_schedule = pp.schedule;
  p.microbatches = pp.microbatches;
  p.activation_checkpointing = r.train.activation_checkpointing;
  p.checkpoint_every = r.train.checkpoint_every;
  for (const char* key : {"distributed.tensor_parallel", "distributed.pipeline_parallel.stages",
                          "distributed.pipeline_parallel.layers",
                          "train.activation_checkpointing"}) {
    p.where[key] = r.where(key);
  }
  STRATA_CHECK_T(ConfigError, pp.stages == 1 || r.data.batch_size % pp.microbatches == 0,
                 r.where("distributed.pipeline_parallel.microbatches"),
                 "data.batch_size = ", r.data.batch_size, " cannot be split into ",
                 pp.microbatches, " equal microbatches; pick a divisor of it");
  return p;
}

dist::DeviceMesh make_mesh(std::shared_ptr<dist::Communicator> world, const ParallelPlan& plan) {
  const int n = world ? world->size() : 1;
  const int64_t tp = plan.tensor_parallel, pp = plan.pipeline_stages;
  STRATA_CHECK_T(ConfigError, n % (tp * pp) == 0, plan.at("distributed.tensor_parallel"),
                 "the job has ", n, " rank(s), not a multiple of distributed.tensor_parallel (",
                 tp, ") x distributed.pipeline_parallel.stages (", pp, ") = ", tp * pp,
                 "; launch a multiple of ", tp * pp, " ranks or lower those sizes");
  return dist::DeviceMesh(std::move(world),
                          {{dist::Axis::kPipeline, static_cast<int>(pp)},
                           {dist::Axis::kData, static_cast<int>(n / (tp * pp))},
                           {dist::Axis::kTensor, static_cast<int>(tp)}});
}

ParallelModel parallelize(const ModelRegistry& models, const ModelSection& config,
                          const InputShape& input, const dist::DeviceMesh& mesh,
                          const ParallelPlan& plan, const std::string& where_model) {
  const ModelSpec& spec = models.get(config.name, where_model, "model.name");
  ParallelModel pm;
  pm.tp = mesh.group(dist::Axis::kTensor);
  pm.pp = mesh.group(dist::Axis::kPipeline);
  const int tp_size = pm.tp->size(), pp_size = pm.pp->size();

  // 1. Pipeline: this rank's stage of the layer list.
  if (pp_size > 1) {
    STRATA_CHECK_T(ConfigError, spec.pipelined(), plan.at("distributed.pipeline_parallel.stages"),
                   "distributed.pipeline_parallel.stages = ", pp_size, " splits a model's "
                   "layer list over stages; model.name=", config.name, " has none (models "
                   "with one: ", or_none(models_where(models, [](const ModelSpec& s) {
                     return s.pipelined();
                   })), "); use stages = 1");
    int64_t layers = 0;
    const int s = pm.pp->rank();
    pm.part = stage_part(spec, config, input, plan, s, &layers);
    pm.pipe = std::make_unique<dist::PipelineExecutor>(pm.pp, plan.pipeline_schedule,
                                                       static_cast<int>(plan.microbatches));
    log_info("pipeline stage ", s, " of ", pp_size, ": layers [", pm.part.layer_begin, ", ",
             pm.part.layer_end, ") of ", layers, " (", plan.pipeline_schedule, ", ",
             plan.microbatches, " microbatches)");
  }
  // 2. Tensor parallelism: built with the group.
  STRATA_CHECK_T(ConfigError, tp_size == 1 || spec.tensor_parallel,
                 plan.at("distributed.tensor_parallel"), "distributed.tensor_parallel = ",
                 tp_size, " but model.name=", config.name, " has no tensor-parallel layers "
                 "(models with them: ", or_none(models_where(models, [](const ModelSpec& s) {
                   return s.tensor_parallel;
                 })), "); use tensor_parallel = 1");
  if (tp_size > 1) pm.part.tp = pm.tp;
  pm.model = spec.build(config, input, pm.part);
  pm.splits = dist::tensor_parallel_shards(*pm.model);
  if (pp_size > 1) pm.tied = spec.tied_parameters;
  // 3. Activation checkpointing of the stage's units.
  pm.model->set_checkpointing(checkpoint_plan(plan.activation_checkpointing,
                                              plan.checkpoint_every,
                                              pm.model->checkpoint_units(),
                                              plan.at("train.activation_checkpointing")));
  return pm;
}

}  // namespace strata::train
