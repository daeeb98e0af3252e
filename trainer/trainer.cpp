#include "trainer/trainer.h"

#include <ATen/Parallel.h>
#include <torch/nn/functional/loss.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <future>
#include <optional>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "distributed/device_mesh.h"
#include "distributed/gradient_reducer.h"
#include "distributed/rank_info.h"
#include "trainer/amp.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/distill.h"
#include "trainer/evaluate.h"
#include "trainer/data/datasets.h"
#include "trainer/metrics.h"
#include "trainer/prequential.h"
#include "trainer/prune.h"
#include "trainer/qat.h"
#include "trainer/parallelize.h"
#include "trainer/stop.h"
#include "trainer/train_step.h"

namespace strata::train {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool stderr_is_terminal() {
  const char* term = std::getenv("TERM");
  return ::isatty(STDERR_FILENO) && term != nullptr &&
         std::string(term) != "dumb";
}

// run.threads = 0: the host's cores shared by the ranks on it.
void configure_threads(int64_t requested, int local_world) {
  int64_t n = requested;
  if (n == 0) {
    n = std::max<int64_t>(1, std::thread::hardware_concurrency() /
                                 std::max(1, local_world));
  }
  at::set_num_threads(static_cast<int>(n));
}

struct EvalResult {
  double loss = 0.0;
  double accuracy = 0.0;
};


}  // namespace

Registries builtin_registries() {
  Registries r;
  register_builtin_models(r.models);
  register_builtin_datasets(r.datasets);
  register_builtin_optimizers(r.optimizers);
  register_builtin_schedules(r.schedules);
  return r;
}

struct Trainer::Impl {
  Impl(Recipe r, const Registries& registries,
       std::shared_ptr<dist::Communicator> comm);
  TrainResult run();

  void check_task(const Registries& registries, const ModelSpec& spec) const;
  void resume_or_start();
  void load_data(const DatasetRegistry& datasets);
  std::unique_ptr<BatchSource> make_loader(int64_t start_batch) const;
  void add_hints(std::vector<std::pair<std::string, at::Tensor>>* trained);
  void plan_steps(const ScheduleRegistry& schedules);
  void log_setup() const;
  void start_qat();
  void init_weights();
  EvalResult evaluate();
  void log_eval(const EvalResult& e);
  void log_prune();
  void log_train(int64_t epoch, double window_s, double run_s);
  // Global samples/s of this process's steps of the window, over `window_s`.
  double window_rate(double window_s) const {
    const int64_t samples_per_step = recipe.data.batch_size * recipe.train.grad_accum * dp_size;
    return static_cast<double>((window_steps - window_carried) * samples_per_step) /
           std::max(1e-9, window_s);
  }
  // An eval or summary record: loss, accuracy (and perplexity for LM).
  JsonObject eval_record(const char* kind, const EvalResult& e) const;
  // Collective. `background`: a periodic one (Note [Asynchronous
  // checkpoints]); the last one, and a stop's, are written at once.
  void save_checkpoint(bool background = false);
  void publish_when_written(const StopDecision& d);
  void finish_write();
  void publish_checkpoint(int64_t at_step);
  // Note [Stopping together]: what a stop on `signal` at this step leaves.
  TrainResult stop_early(int signal, Clock::time_point t0, int64_t start_step);
  // The loss of one microbatch's output (teacher on `inputs`).
  at::Tensor micro_loss(const at::Tensor& output, const at::Tensor& inputs,
                        const at::Tensor& targets);
  ShardLayout shard_layout() const;
  // What checkpoints save and restore.
  Trained trained() const {
    return Trained{*pm.model, *optimizer, optimizer_spec->state, hints.get(), pm.splits,
                   qat ? &qat->observers() : nullptr};
  }
  int64_t map_data_position(const TrainState& saved) const;
  // A small batch of evaluation inputs to trace the model on (QAT, channel groups).
  at::Tensor example_batch() const {
    return eval_inputs.slice(0, 0, std::min<int64_t>(2, eval_inputs.size(0)));
  }
  // Mean over data-parallel ranks of this rank's value (collective); a
  // pipeline's last stage has it and tells the others.
  double global_mean(const at::Tensor& local) const;
  bool writer() const { return mesh.rank() == 0; }
  // Whether the data has a held-out split to evaluate on (a stream has none).
  bool evaluates() const { return data.eval_samples > 0; }
  bool due(int64_t every) const {
    return state.step % (every > 0 ? every : steps_per_epoch) == 0;
  }

  Recipe recipe;
  ParallelPlan plan;
  dist::DeviceMesh mesh;  // pp x dp x tp
  std::shared_ptr<dist::Communicator> dp_group;  // size dp_size (self when 1)
  int dp_rank = 0;
  int dp_size = 1;
  at::Device device{at::kCPU};  // run.device resolved
  std::string run_dir;
  LoadedData data;  // the dataset's splits (the data seam)
  bool lm = false;  // language modelling: perplexity, tokens/s
  at::Tensor eval_inputs, eval_targets;  // this rank's evaluation shard, on the device
  at::ScalarType compute_dtype = at::kFloat;  // train.precision
  ParallelModel pm;  // this rank's part of the model
  std::shared_ptr<Model> teacher;  // distill.teacher; null: no distillation
  at::ScalarType teacher_dtype = at::kFloat;
  std::shared_ptr<HintLoss> hints;  // distill.hints; null: none
  const OptimizerSpec* optimizer_spec = nullptr;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<TrainStep> step;
  std::unique_ptr<Pruner> pruner;  // train.prune.sparsity > 0
  std::shared_ptr<QatGraph> qat;   // train.qat.enabled
  std::unique_ptr<Prequential> online;  // train.prequential, or a stream
  std::unique_ptr<LrSchedule> schedule;
  int64_t micro_per_epoch = 0;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  TrainState state;
  CheckpointStore store;
  std::unique_ptr<MetricsWriter> metrics;
  Progress progress;
  int64_t last_saved_step = -1;
  Clock::time_point last_saved_at = Clock::now();  // checkpoint.every_minutes
  Clock::time_point run_t0 = Clock::now();         // run() started: records' time_s
  int64_t last_eval_step = -1;
  EvalResult last_eval;
  double shown_loss = std::nan(""), shown_rate = 0.0;  // last logged values
  // The train record's window: this rank's loss sum (on the device), its
  // steps, and of those the ones a resumed checkpoint carried in.
  at::Tensor window_loss;
  int64_t window_steps = 0;
  int64_t window_carried = 0;
  int requeue_signal = 0;  // checkpoint.requeue_signal
  std::future<void> writing;     // the background write of unpublished_step (dp rank 0)
  int64_t unpublished_step = -1;  // written in the background, not yet published
};

Trainer::Impl::Impl(Recipe r, const Registries& registries,
                    std::shared_ptr<dist::Communicator> c)
    : recipe(std::move(r)),
      plan(parallel_plan(recipe)),
      mesh(make_mesh(std::move(c), plan)),
      dp_group(mesh.group(dist::Axis::kData)),
      dp_rank(dp_group->rank()),
      dp_size(dp_group->size()),
      run_dir(recipe.run_dir()),
      store(join_path(run_dir, "checkpoints"), recipe.checkpoint.keep, shard_layout()),
      progress(ProgressOptions{}),
      requeue_signal(requeue_signal_number(recipe.checkpoint.requeue_signal)) {
  const dist::RankInfo ranks = mesh.size() > 1 ? dist::discover_ranks() : dist::RankInfo{};
  // Ranks on this host share its cores (local_world 0: the launcher did
  // not say, e.g. SLURM; assume one rank per host).
  configure_threads(recipe.run.threads, mesh.size() > 1 ? std::max(1, ranks.local_world) : 1);
  device = resolve_device(recipe.run.device, ranks.local_rank, recipe.where("run.device"));
  STRATA_CHECK_T(ConfigError,
                 !device.is_cuda() || mesh.size() == 1 ||
                     mesh.world()->supports(dist::Capability::kDeviceMemory),
                 recipe.where("distributed.backend"), "distributed.backend=",
                 mesh.world()->backend(), " moves host memory only but run.device is ",
                 device.str(), "; use nccl (or auto) on GPUs");
  compute_dtype = precision_dtype(recipe.train.precision);
  STRATA_CHECK_T(ConfigError, compute_dtype != at::kHalf || device.is_cuda(),
                 recipe.where("train.precision"), "train.precision=fp16 needs a GPU "
                 "(run.device: cuda); use bf16 on the CPU");
  const ModelSpec& spec = registries.models.get(recipe.model.name, recipe.where("model.name"),
                                                "model.name");
  check_task(registries, spec);
  load_data(registries.datasets);

  torch::manual_seed(static_cast<uint64_t>(recipe.run.seed));
  pm = parallelize(registries.models, recipe.model, data.shape, mesh, plan,
                   recipe.where("model.name"));
  Model& model = *pm.model;
  model.to(device);
  if (!recipe.train.init.empty()) init_weights();
  // The teacher is whole on every rank that computes the loss (a
  // pipeline's last stage).
  if (!recipe.distill.teacher.empty() && pm.computes_loss()) {
    teacher = load_teacher(recipe, registries.models, data.shape, device);
    teacher_dtype = precision_dtype(recipe.distill.teacher_precision);
    log_info("distilling from ", recipe.distill.teacher, " (", recipe.distill.teacher_model.name,
             ", ", parameter_count(*teacher), " parameters): alpha ",
             format_double(recipe.distill.alpha), ", temperature ",
             format_double(recipe.distill.temperature));
  }
  optimizer_spec = &registries.optimizers.get(recipe.optimizer.name,
                                              recipe.where("optimizer.name"), "optimizer.name");
  optimizer = optimizer_spec->make(recipe, model);
  std::vector<std::pair<std::string, at::Tensor>> extra;
  add_hints(&extra);
  step = std::make_unique<TrainStep>(
      pm, *optimizer, std::move(extra),
      [this](const at::Tensor& y, const at::Tensor& x, const at::Tensor& t) {
        return micro_loss(y, x, t);
      },
      dp_group, device, train_step_options(recipe));

  plan_steps(registries.schedules);
  if (recipe.train.prune.sparsity != 0.0) {
    STRATA_CHECK_T(ConfigError, !pm.model_parallel(), recipe.where("train.prune"),
                   "train.prune with tensor or pipeline parallelism is not supported yet (each "
                   "rank holds part of the weights, and the global threshold would need them "
                   "all); prune with data parallelism only");
    const std::vector<ChannelGroup> groups =
        recipe.train.prune.structure == "channels"
            ? channel_groups(*pm.model,
                             example_batch())
            : std::vector<ChannelGroup>{};
    pruner = std::make_unique<Pruner>(recipe.train.prune, model, total_steps,
                                      recipe.where("train.prune"), groups);
    step->set_pruner(pruner.get());
  }
  if (recipe.train.qat.enabled) start_qat();
  if (recipe.train.prequential || !evaluates()) {
    STRATA_CHECK_T(ConfigError, !pm.pipe, recipe.where("train.prequential"), "prequential "
                   "evaluation scores the model's output, which a pipeline's stages do not all "
                   "see; use distributed.pipeline_parallel.stages = 1");
    online = std::make_unique<Prequential>(device);
  }
  log_setup();
}

// train.init: the model's weights from a model.pt (fine-tuning), before the
// optimizer and the data-parallel broadcast see them.
void Trainer::Impl::init_weights() {
  STRATA_CHECK_T(ConfigError, !pm.model_parallel(), recipe.where("train.init"),
                 "train.init with tensor or pipeline parallelism is not supported yet (each rank "
                 "holds part of the model); fine-tune with data parallelism only");
  load_init_weights(*pm.model, recipe);
  log_info("starting from the weights of ", recipe.train.init);
}

// Quantization-aware training: the model's forward replaced by its QAT graph.
void Trainer::Impl::start_qat() {
  const std::string where = recipe.where("train.qat");
  STRATA_CHECK_T(ConfigError, !pm.model_parallel(), where,
                 "train.qat with tensor or pipeline parallelism is not supported (the QAT graph "
                 "is traced from the whole model); use data parallelism only");
  STRATA_CHECK_T(ConfigError, recipe.train.activation_checkpointing == "none", where,
                 "train.qat with train.activation_checkpointing=",
                 recipe.train.activation_checkpointing, " is not supported (the QAT graph "
                 "replaces the model's forward, where checkpointing happens); set "
                 "train.activation_checkpointing=none");
  STRATA_CHECK_T(ConfigError, hints == nullptr, where,
                 "train.qat with distill.hints is not supported (the hints read the model's "
                 "units, which the QAT graph does not expose); distil on logits only");
  qat = std::make_shared<QatGraph>(*pm.model, recipe.train.qat,
                                   example_batch(),
                                   where);
  pm.forward_graph = [q = qat.get()](const at::Tensor& x) { return q->forward(x); };
  log_info("quantization-aware training from step ", recipe.train.qat.start_step, ": ",
           qat->weights(), " weights (", recipe.train.qat.per_channel ? "per channel" : "per tensor",
           ") and ", qat->activations(), " activations fake-quantized to int8");
}

// Steps per epoch and in all, and the learning-rate schedule over them.
void Trainer::Impl::plan_steps(const ScheduleRegistry& schedules) {
  const DataSection& d = recipe.data;
  const int64_t per_rank = data.train_samples / dp_size;
  micro_per_epoch = per_rank / d.batch_size;
  STRATA_CHECK_T(ConfigError, micro_per_epoch >= recipe.train.grad_accum,
                 recipe.where("data.batch_size"), "data.batch_size=",
                 d.batch_size, " x train.grad_accum=", recipe.train.grad_accum,
                 " needs more than the ", per_rank, " training samples each of ",
                 dp_size, " rank(s) reads per epoch; lower either");
  steps_per_epoch = micro_per_epoch / recipe.train.grad_accum;
  total_steps = recipe.train.max_steps > 0
                    ? recipe.train.max_steps
                    : recipe.train.epochs * steps_per_epoch;
  schedule = make_schedule(schedules, recipe, total_steps);
}

void Trainer::Impl::log_setup() const {
  const DataSection& d = recipe.data;
  log_info("model ", recipe.model.name, " with ", parameter_count(*pm.model),
           " parameters; ", recipe.data.name, ": ", data.summary, "; ", total_steps, " steps of ",
           d.batch_size * recipe.train.grad_accum * dp_size, " samples (",
           dp_size, " data-parallel rank(s)) on ", device.str(), " in ", recipe.train.precision,
           "; ", at::get_num_threads(), " threads per rank");
  if (mesh.size() > 1) log_info("device mesh ", mesh.describe());
  if (step->data_parallel()) {
    log_info("data parallel over ", dp_size, " ranks (", dp_group->backend(), "), overlap ",
             recipe.distributed.overlap ? "on" : "off");
  }
}

// The data's task must be the model's.
void Trainer::Impl::check_task(const Registries& registries, const ModelSpec& spec) const {
  const DatasetSpec& dataset = registries.datasets.get(recipe.data.name,
                                                       recipe.where("data.name"), "data.name");
  if (spec.task == dataset.task) return;
  const Task task = dataset.task;
  const std::vector<std::string> models = models_where(registries.models, [&](const ModelSpec& m) {
    return m.task == task;
  });
  std::vector<std::string> datasets;
  for (const auto& name : registries.datasets.names()) {
    if (registries.datasets.find(name)->task == spec.task) datasets.push_back("data.name=" + name);
  }
  throw ConfigError(str(recipe.where("data.name"), "data.name=", recipe.data.name, " is ",
                        task_name(task), " data but model.name=", recipe.model.name, " is a ",
                        task_name(spec.task), " model; use ", join(datasets, " or "), ", or a ",
                        task_name(task), " model (registered: ", join(models, ", "), ")"));
}

void Trainer::Impl::add_hints(std::vector<std::pair<std::string, at::Tensor>>* trained) {
  const auto hint_pairs = parse_hint_pairs(recipe.distill.hints, recipe.where("distill.hints"));
  if (hint_pairs.empty()) return;
  STRATA_CHECK_T(ConfigError, !pm.pipe, recipe.where("distill.hints"),
                 "distill.hints pairs student and teacher layers, which a pipeline splits "
                 "over ranks; use hints with distributed.pipeline_parallel.stages = 1");
  STRATA_CHECK_T(ConfigError, teacher != nullptr, recipe.where("distill.hints"),
                 "distill.hints needs a teacher: set distill.teacher");
  hints = std::make_shared<HintLoss>(hint_pairs, *pm.model, *teacher,
                                     eval_inputs.slice(0, 0, 2).to(device));
  // The projections train with the student, under its optimizer's settings.
  optimizer->add_param_group(torch::optim::OptimizerParamGroup(
      hints->parameters(), optimizer->param_groups()[0].options().clone()));
  for (auto& p : hints->named_parameters()) {
    trained->emplace_back("distill.hints." + p.key(), p.value());
  }
  log_info("distillation hints ", recipe.distill.hints, " (", parameter_count(*hints),
           " projection parameters), weight ", format_double(recipe.distill.hint_weight));
}

ShardLayout Trainer::Impl::shard_layout() const {
  return ShardLayout{dp_size, mesh.size(dist::Axis::kTensor), mesh.size(dist::Axis::kPipeline),
                     mesh.coord(dist::Axis::kTensor), mesh.coord(dist::Axis::kPipeline)};
}

// Evaluation is sharded: each rank scores a contiguous slice, the sums are
// all-reduced (every evaluation sample counted exactly once).
void Trainer::Impl::load_data(const DatasetRegistry& datasets) {
  data = datasets.get(recipe.data.name, recipe.where("data.name"), "data.name")
             .load(recipe, dp_rank, dp_size);
  lm = data.task == Task::kLanguageModel;
  eval_inputs = data.eval_inputs.to(device);
  eval_targets = data.eval_targets.to(device);
}

std::unique_ptr<BatchSource> Trainer::Impl::make_loader(int64_t start_batch) const {
  return data.stream(StreamRequest{dp_rank, dp_size, micro_per_epoch, start_batch,
                                   device.is_cuda()});
}

void Trainer::Impl::resume_or_start() {
  window_loss = at::zeros({}, at::TensorOptions(at::kDouble).device(device));
  const std::string& mode = recipe.train.resume;
  std::string path;
  if (mode == "auto") {
    path = store.newest();
  } else if (mode == "never") {
    STRATA_CHECK_T(ConfigError, store.newest().empty(), recipe.where("train.resume"),
                   "run directory '", run_dir, "' already holds checkpoints (",
                   store.newest(), ") and train.resume=never; set "
                   "train.resume=auto to continue that run, or pick another "
                   "run.name or run.dir (nothing was deleted)");
  } else {
    path = mode;
  }
  if (!path.empty()) {
    TrainState saved = load_checkpoint(path, shard_layout(), trained(), device);
    state.step = saved.step;
    state.micro_batches = map_data_position(saved);
    if (step->scaler().enabled() && saved.loss_scale > 0) {
      step->scaler().restore(saved.loss_scale, saved.loss_scale_growth);
    }
    last_saved_step = state.step;
    if (saved.window_steps > 0 && !saved.window_loss.empty()) {
      // This rank's sum in the same layout; in another the ranks' mean.
      double sum = 0.0;
      for (double l : saved.window_loss) sum += l;
      const bool same = static_cast<int64_t>(saved.window_loss.size()) == dp_size;
      window_loss.fill_(same ? saved.window_loss[static_cast<size_t>(dp_rank)]
                             : sum / static_cast<double>(saved.window_loss.size()));
      window_steps = window_carried = saved.window_steps;
    }
    if (pruner) pruner->restore_from_weights();
    if (online && !saved.online.empty()) online->restore(saved.online, dp_rank == 0);
    log_info("resumed from ", path, " at step ", state.step);
  }
  if (mesh.size() > 1) {
    // Every rank must resume from the same checkpoint.
    const at::Device on = dist::transport_device(*mesh.world(), device);
    at::Tensor theirs = at::full({1}, state.step, at::TensorOptions(at::kLong).device(on));
    at::Tensor mine = theirs.clone();
    mesh.world()->broadcast(theirs, 0)->wait();
    STRATA_CHECK_T(Error, at::equal(theirs, mine), "rank ", mesh.rank(),
                   " resumed at step ", state.step, " but rank 0 at step ",
                   theirs.item<int64_t>(), "; all ranks must see the same run "
                   "directory (run.dir on a shared filesystem)");
  }
  const std::string metrics_path = join_path(run_dir, "metrics.jsonl");
  if (writer()) MetricsWriter::rewind(metrics_path, state.step);
  metrics = std::make_unique<MetricsWriter>(metrics_path, writer(), recipe.metrics.tensorboard);
}

// The checkpoint's data position in this run's layout. Same world size and
// batch: exact. Otherwise the same epoch and the same fraction of it, since
// a different number of ranks reads the data in a different order anyway.
int64_t Trainer::Impl::map_data_position(const TrainState& saved) const {
  if (saved.world == dp_size && saved.micro_per_epoch == micro_per_epoch) {
    return saved.micro_batches;
  }
  const int64_t old_per_epoch = std::max<int64_t>(1, saved.micro_per_epoch);
  const int64_t epoch = saved.micro_batches / old_per_epoch;
  const int64_t within = saved.micro_batches % old_per_epoch;
  log_warn("resuming a checkpoint written by ", saved.world, " rank(s) with ",
           old_per_epoch, " micro-batches per epoch on ", dp_size, " rank(s) with ",
           micro_per_epoch, ": continuing at the same point of epoch ", epoch,
           "; the data order differs from an uninterrupted run");
  return epoch * micro_per_epoch + within * micro_per_epoch / old_per_epoch;
}

double Trainer::Impl::global_mean(const at::Tensor& local) const {
  at::Tensor t = local.to(dist::transport_device(*mesh.world(), device), at::kDouble)
                     .reshape({1})
                     .clone();
  if (dp_size > 1) dp_group->all_reduce(t, dist::ReduceOp::kAvg)->wait();
  // Pipeline: only the last stage has the loss.
  if (pm.pipe) pm.pp->broadcast(t, pm.pp->size() - 1)->wait();
  return t.item<double>();
}

at::Tensor Trainer::Impl::micro_loss(const at::Tensor& logits, const at::Tensor& inputs,
                                     const at::Tensor& targets) {
  namespace F = torch::nn::functional;
  at::Tensor teacher_logits;
  if (teacher) {  // frozen: no autograd, its own precision
    torch::NoGradGuard no_grad;
    AutocastGuard amp(device.type(), teacher_dtype);
    teacher_logits = teacher->forward(inputs);
  }
  if (online) online->score(logits, targets);
  AutocastGuard amp(device.type(), compute_dtype);
  at::Tensor loss =
      teacher ? distillation_loss(logits, teacher_logits, targets, recipe.distill.alpha,
                                  recipe.distill.temperature)
              : pm.model->loss(logits, targets);
  if (hints) loss = loss + recipe.distill.hint_weight * hints->forward(*pm.model, *teacher);
  return loss;
}

EvalResult Trainer::Impl::evaluate() {
  Model& model = *pm.model;
  EvalSums e;
  // This rank's shard; the line shows rank 0's.
  const EvalProgress shown = [this](int64_t done, int64_t total) {
    progress.evaluating(data.eval_split, done, total);
  };
  if (pm.pipe) {
    model.eval();
    e = evaluate_classifier(
        [&](const at::Tensor& x) {
          return pm.pipe->forward(x, [&](const at::Tensor& in) { return model.forward(in); });
        },
        eval_inputs, eval_targets, recipe.data.eval_batch_size, compute_dtype, shown);
    model.train();
  } else {
    model.eval();
    e = evaluate_classifier([&](const at::Tensor& x) { return pm.forward(x); }, eval_inputs,
                            eval_targets, recipe.data.eval_batch_size, compute_dtype, shown);
    model.train();
  }
  progress.clear();
  at::Tensor sums = at::tensor({e.loss_sum, static_cast<double>(e.correct),
                                static_cast<double>(e.count)}, at::kDouble)
                       .to(dist::transport_device(*mesh.world(), device));
  // Pipeline: the last stage scored the samples.
  if (pm.pipe) pm.pp->broadcast(sums, pm.pp->size() - 1)->wait();
  if (dp_size > 1) dp_group->all_reduce(sums, dist::ReduceOp::kSum)->wait();
  sums = sums.cpu();
  const double total = sums[2].item<double>();
  return {sums[0].item<double>() / total, sums[1].item<double>() / total};
}

JsonObject Trainer::Impl::eval_record(const char* kind, const EvalResult& e) const {
  JsonObject r;
  r.add("kind", kind)
      .add("step", state.step)
      .add("split", data.eval_split)
      .add("loss", e.loss)
      .add("accuracy", e.accuracy);
  if (lm) r.add("perplexity", std::exp(e.loss));
  return r;
}

// A "prune" record: the ramp's target and each pruned weight's sparsity.
void Trainer::Impl::log_prune() {
  const PruneSummary p = prune_record(*pruner, recipe.train.prune.structure, state.step);
  metrics->write(JsonObject(p.record).add("time_s", seconds_since(run_t0)));
  if (state.step > 0 || p.sparsity > 0) {
    log_info("pruned to sparsity ", format_metric(p.sparsity), " at step ", state.step, " (",
             p.pruned, " of ", p.total, " ", p.unit, ")");
  }
}

void Trainer::Impl::log_eval(const EvalResult& e) {
  last_eval = e;
  last_eval_step = state.step;
  metrics->write(eval_record("eval", e).add("time_s", seconds_since(run_t0)));
  progress.clear();
  log_info("eval step ", state.step, ": ", data.eval_split, " loss ",
           format_metric(e.loss), " accuracy ", format_metric(e.accuracy),
           lm ? " perplexity " + format_metric(std::exp(e.loss)) : std::string());
}

// A train record: the window's mean loss over all ranks (checked finite)
// and its rate.
void Trainer::Impl::log_train(int64_t epoch, double window_s, double run_s) {
  const double loss = global_mean(window_loss) / static_cast<double>(window_steps);
  STRATA_CHECK_T(Error, std::isfinite(loss), "training loss became ",
                 loss, " by step ", state.step, "; lower optimizer.lr, "
                 "enable train.clip_grad_norm, or check the data");
  const double rate = window_rate(window_s);
  JsonObject record;
  record.add("kind", "train")
      .add("step", state.step)
      .add("epoch", epoch)
      .add("loss", loss)
      .add("lr", schedule->lr(state.step - 1))
      .add("samples_per_s", rate);
  if (lm) record.add("tokens_per_s", rate * static_cast<double>(data.tokens_per_sample));
  const LossScaler& scaler = step->scaler();
  if (scaler.enabled()) {
    record.add("loss_scale", scaler.scale()).add("skipped_steps", scaler.skipped_steps());
  }
  metrics->write(record.add("time_s", run_s));
  if (online) {
    metrics->write(online->close_window(state.step, dp_group.get(), pm.model->mixture_weights())
                       .add("time_s", run_s));
  }
  shown_loss = loss;
  shown_rate = rate;
}

void Trainer::Impl::save_checkpoint(bool background) {
  if (last_saved_step == state.step) return;
  last_saved_step = state.step;
  last_saved_at = Clock::now();
  const LossScaler& scaler = step->scaler();
  state.world = dp_size;
  state.micro_per_epoch = micro_per_epoch;
  state.loss_scale = scaler.enabled() ? scaler.scale() : 0.0;
  state.loss_scale_growth = scaler.growth_tracker();
  state.window_steps = window_steps;
  if (online) state.online = online->state(dp_group.get());
  state.window_loss.clear();
  if (window_steps > 0) {  // collective: every rank saves at this step
    const at::Device on = dist::transport_device(*mesh.world(), device);
    at::Tensor mine = window_loss.to(on).reshape({1});
    std::vector<at::Tensor> all(static_cast<size_t>(dp_size), at::empty_like(mine));
    if (dp_size > 1) {
      dp_group->all_gather(all, mine)->wait();
    } else {
      all[0] = mine;
    }
    for (const auto& t : all) state.window_loss.push_back(t.item<double>());
  }
  // Note [Sharded checkpoints]: one shard per (pp, tp) coordinate, from
  // its dp = 0 rank; metadata once they all are on disk.
  finish_write();  // one write in flight at a time
  if (background && recipe.checkpoint.async) {
    if (dp_rank == 0) {
      auto snap = std::make_shared<CheckpointSnapshot>(store.snapshot(state, trained()));
      writing = std::async(std::launch::async, [this, snap] { store.write(*snap); });
    }
    unpublished_step = state.step;
    return;
  }
  if (dp_rank == 0) store.save(state, trained());
  publish_checkpoint(state.step);
}

// Note [Asynchronous checkpoints]: a periodic checkpoint is copied into
// host memory at its step (CheckpointStore::snapshot, on this thread) and
// written by a background task while training goes on. metadata.json may
// only be written once every shard is on disk, so each rank says in the
// stop agreement whether its write is still running, and when the ranks
// agree -- about a step after the write began -- that none is, rank 0
// publishes (publish_when_written). A checkpoint due while the previous is
// still being written, and the end of the run or a stop, wait for it
// (finish_write: a collective barrier, then the publication).
void Trainer::Impl::publish_when_written(const StopDecision& d) {
  if (unpublished_step < 0 || d.as_of <= unpublished_step || d.writing) return;
  if (writing.valid()) writing.get();  // done: rethrows a failed write
  const int64_t step_written = std::exchange(unpublished_step, -1);
  if (!writer()) return;
  store.publish(step_written);
  progress.clear();
  log_info("saved checkpoint ", store.newest(), " (written in the background)");
}

void Trainer::Impl::finish_write() {
  if (unpublished_step < 0) return;
  if (writing.valid()) writing.get();
  publish_checkpoint(std::exchange(unpublished_step, -1));
}

void Trainer::Impl::publish_checkpoint(int64_t at_step) {
  if (mesh.size() > 1) mesh.world()->barrier()->wait();
  if (!writer()) return;
  store.publish(at_step);
  progress.clear();
  log_info("saved checkpoint ", store.newest());
}

TrainResult Trainer::Impl::run() {
  const auto t0 = run_t0 = Clock::now();
  if (writer()) {
    make_dirs(run_dir);
    atomic_write_file(join_path(run_dir, "recipe.yaml"), to_yaml(recipe));
  }
  resume_or_start();
  progress = Progress(ProgressOptions{total_steps, recipe.run.log_every,
                                      writer() && stderr_is_terminal(), state.step});
  std::unique_ptr<BatchSource> loader = make_loader(state.micro_batches);
  int64_t epoch = 0;
  const auto next = [&] {
    Batch b = loader->next();
    ++state.micro_batches;
    epoch = b.epoch;
    return b;
  };
  const int64_t start_step = state.step;
  auto window_t0 = Clock::now();
  const StopSignals signals(requeue_signal);
  StopAgreement agreement(mesh.world(), dist::transport_device(*mesh.world(), device), writer());
  const double every_s = recipe.checkpoint.every_minutes * 60.0;
  while (state.step < total_steps) {
    if (pruner && pruner->update(state.step)) log_prune();
    if (qat) qat->set_step(state.step);
    const StepResult r = step->run(next, schedule->lr(state.step));
    if (qat && qat->observing() && dp_size > 1) {
      qat->average_over(*dp_group, dist::transport_device(*mesh.world(), device));
    }
    if (r.skipped) {
      log_warn("step ", state.step + 1, ": inf/NaN gradients in fp16; step skipped, "
               "loss scale lowered to ", format_double(step->scaler().scale()));
    }
    if (r.loss.defined()) window_loss += r.loss;
    ++state.step;
    ++window_steps;
    const bool last = state.step == total_steps;
    if (state.step % recipe.run.log_every == 0 || last) {
      log_train(epoch, seconds_since(window_t0), seconds_since(t0));
      window_loss.zero_();
      window_steps = 0;
      window_carried = 0;
      window_t0 = Clock::now();
    }
    // On a terminal, at most 10 times a second, the live loss and rate of
    // the window so far (this rank's loss: a host sync only when drawn);
    // otherwise the last logged ones, no extra synchronisation.
    ProgressState shown{state.step, epoch, shown_loss, schedule->lr(state.step - 1), shown_rate,
                        seconds_since(t0)};
    if (progress.due(shown.elapsed_s) && window_steps > 0 && pm.computes_loss()) {
      shown.loss = window_loss.item<double>() / static_cast<double>(window_steps);
      shown.samples_per_s = window_rate(seconds_since(window_t0));
    }
    progress.update(shown);
    // Evaluation and checkpoints are not training: keep them out of the
    // samples/s window.
    const auto pause_t0 = Clock::now();
    const bool still_writing = writing.valid() && writing.wait_for(std::chrono::seconds(0)) !=
                                                      std::future_status::ready;
    const StopDecision stop = agreement.after_step(
        state.step, every_s > 0 && seconds_since(last_saved_at) >= every_s, still_writing);
    publish_when_written(stop);
    if (stop.signal != 0 && !last) {
      agreement.finish();
      return stop_early(stop.signal, t0, start_step);
    }
    if (due(recipe.train.eval_every) && !last && evaluates()) log_eval(evaluate());
    if (last) {
      save_checkpoint();
    } else if (due(recipe.checkpoint.every_steps) || stop.checkpoint) {
      save_checkpoint(/*background=*/true);
    }
    window_t0 += Clock::now() - pause_t0;
  }
  agreement.finish();
  progress.finish();
  if (last_eval_step != state.step && evaluates()) log_eval(evaluate());
  save_checkpoint();
  finish_write();
  if (writer()) {
    // Model parallel: the full model, consolidated from the final checkpoint.
    if (pm.model_parallel()) {
      save_state_dict(join_path(run_dir, "model.pt"), consolidate_checkpoint(store.newest()));
    } else {
      save_state_dict(join_path(run_dir, "model.pt"), *pm.model);
    }
    if (qat) save_qat_ranges(qat->ranges(), join_path(run_dir, "qat.pt"));
  }

  TrainResult result{last_eval.loss, last_eval.accuracy, lm, state.step,
                     seconds_since(t0), run_dir};
  // A stream has no held-out split: its summary is the prequential error.
  JsonObject summary = evaluates() ? eval_record("summary", last_eval)
                                    : JsonObject().add("kind", "summary").add("step", state.step);
  result.evaluated = evaluates();
  if (online) {
    result.online_error = online->error();
    result.online_instances = online->instances();
    summary.add("online_error", result.online_error).add("instances", result.online_instances);
  }
  metrics->write(
      summary.add("steps_this_run", state.step - start_step).add("wall_s", result.wall_s));
  return result;
}

TrainResult Trainer::Impl::stop_early(int signal, Clock::time_point t0, int64_t start_step) {
  save_checkpoint();
  progress.finish();
  const int code = stop_exit_code(signal, requeue_signal);
  metrics->write(JsonObject()
                     .add("kind", "stopped")
                     .add("step", state.step)
                     .add("signal", signal_name(signal))
                     .add("exit_code", code)
                     .add("time_s", seconds_since(t0)));
  log_info("stopped at step ", state.step, " of ", total_steps, " on ", signal_name(signal),
           " (", state.step - start_step, " steps this run): checkpoint ", store.newest(),
           code == kRequeueExitCode ? "; checkpointed for requeue" : "",
           "; the same command resumes from it");
  TrainResult r{last_eval.loss, last_eval.accuracy, lm, state.step, seconds_since(t0), run_dir};
  r.stopped_by = signal;
  r.exit_code = code;
  return r;
}

Trainer::Trainer(Recipe recipe, const Registries& registries,
                 std::shared_ptr<dist::Communicator> world)
    : impl_(std::make_unique<Impl>(std::move(recipe), registries,
                                   std::move(world))) {}
Trainer::~Trainer() = default;
TrainResult Trainer::run() { return impl_->run(); }

}  // namespace strata::train
