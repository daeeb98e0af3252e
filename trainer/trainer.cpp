#include "trainer/trainer.h"

#include <ATen/Parallel.h>
#include <torch/nn/functional/loss.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "distributed/device_mesh.h"
#include "distributed/gradient_reducer.h"
#include "distributed/rank_info.h"
#include "distributed/tensor_parallel.h"
#include "trainer/activation_checkpoint.h"
#include "trainer/amp.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/distill.h"
#include "trainer/evaluate.h"
#include "distributed/pipeline_executor.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/data/text.h"
#include "trainer/metrics.h"
#include "trainer/models/gpt.h"

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

dist::CommHook comm_hook(const std::string& name) {
  if (name == "fp16") return dist::CommHook::kFp16;
  if (name == "bf16") return dist::CommHook::kBf16;
  return dist::CommHook::kNone;
}

struct EvalResult {
  double loss = 0.0;
  double accuracy = 0.0;
};

std::vector<std::string> as_strings(const std::vector<int64_t>& v) {
  std::vector<std::string> out;
  for (int64_t x : v) out.push_back(std::to_string(x));
  return out;
}

// The job's layout: world = pp x dp x tp (tensor parallelism innermost, on
// neighbouring ranks; Megatron's order), dp inferred.
std::vector<dist::MeshAxis> mesh_axes(const Recipe& r, const std::shared_ptr<dist::Communicator>& world) {
  const int n = world ? world->size() : 1;
  const int64_t tp = r.distributed.tensor_parallel;
  const int64_t pp = r.distributed.pipeline_parallel.stages;
  STRATA_CHECK_T(ConfigError, n % (tp * pp) == 0, r.where("distributed.tensor_parallel"),
                 ": the job has ", n, " rank(s), not a multiple of distributed.tensor_parallel (",
                 tp, ") x distributed.pipeline_parallel.stages (", pp, ") = ", tp * pp,
                 "; launch a multiple of ", tp * pp, " ranks or lower those sizes");
  return {{"pp", static_cast<int>(pp)}, {"dp", static_cast<int>(n / (tp * pp))},
          {"tp", static_cast<int>(tp)}};
}

}  // namespace

Registries builtin_registries() {
  Registries r;
  register_builtin_models(r.models);
  register_builtin_optimizers(r.optimizers);
  register_builtin_schedules(r.schedules);
  return r;
}

struct Trainer::Impl {
  Impl(Recipe r, const Registries& registries,
       std::shared_ptr<dist::Communicator> comm);
  TrainResult run();

  void resume_or_start();
  void load_data();
  std::unique_ptr<BatchSource> make_loader(int64_t start_batch) const;
  at::Tensor train_step(BatchSource& loader, int64_t* epoch);
  EvalResult evaluate();
  void log_eval(const EvalResult& e);
  // An eval or summary record: loss, accuracy (and perplexity for text).
  JsonObject eval_record(const char* kind, const EvalResult& e) const;
  void save_checkpoint();
  void setup_data_parallel();
  void setup_model_parallel(const Registries& registries);
  // Model parallelism: reductions over the ranks holding the other parts
  // of the model (tp, then pp), in place.
  void over_model(at::Tensor& t, dist::ReduceOp op) const;
  // The loss of one microbatch's logits (teacher on `inputs`), under autocast.
  at::Tensor micro_loss(const at::Tensor& logits, const at::Tensor& inputs,
                        const at::Tensor& targets);
  ShardLayout shard_layout() const;
  bool model_parallel() const { return tp_size * pp_size > 1; }
  int64_t map_data_position(const TrainState& saved) const;
  // Mean over ranks (a collective when data parallel).
  double global_mean(const at::Tensor& local) const;
  bool writer() const { return mesh.rank() == 0; }
  // Where collectives on small bookkeeping tensors run: NCCL moves only
  // GPU memory, the CPU backends host memory.
  at::Device comm_device() const {
    return comm && std::string(comm->backend()) == "nccl" ? device : at::Device(at::kCPU);
  }
  bool due(int64_t every) const {
    return state.step % (every > 0 ? every : steps_per_epoch) == 0;
  }

  Recipe recipe;
  // The job's layout: pp x dp x tp.
  dist::DeviceMesh mesh;
  std::shared_ptr<dist::Communicator> comm;  // the dp group; null: dp = 1
  int rank = 0;   // in the dp group
  int world = 1;  // dp size
  std::shared_ptr<dist::Communicator> tp_group, pp_group;  // size 1: self
  int tp_size = 1, pp_size = 1;
  std::unique_ptr<dist::PipelineExecutor> pipe;  // pp > 1
  std::map<std::string, dist::TpShard> splits;  // the model's split parameters
  std::vector<double> norm_weights;  // clip_grad_norm's, model parallel
  at::Device device{at::kCPU};  // run.device resolved
  std::unique_ptr<dist::GradientReducer> reducer;
  std::string run_dir;
  // Training data: images, or bytes of text.
  std::shared_ptr<const ImageDataset> images;
  std::shared_ptr<const std::vector<uint8_t>> text;
  InputShape input_shape;
  int64_t train_samples = 0;      // per epoch, all ranks (text: windows)
  int64_t tokens_per_sample = 1;  // text: model.seq_len
  at::Tensor eval_inputs, eval_targets;  // this rank's evaluation shard
  int64_t eval_samples = 0;              // all ranks
  at::ScalarType compute_dtype = at::kFloat;  // train.precision
  LossScaler scaler{LossScalerOptions{false}};
  std::shared_ptr<Model> model;
  std::shared_ptr<Model> teacher;  // distill.teacher; null: no distillation
  at::ScalarType teacher_dtype = at::kFloat;
  std::shared_ptr<HintLoss> hints;  // distill.hints; null: none
  std::vector<at::Tensor> params;   // what the optimizer trains: model (+ hints)
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<LrSchedule> schedule;
  int64_t micro_per_epoch = 0;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  TrainState state;
  CheckpointStore store;
  std::unique_ptr<MetricsWriter> metrics;
  Progress progress;
  int64_t last_saved_step = -1;
  int64_t last_eval_step = -1;
  EvalResult last_eval;
};

Trainer::Impl::Impl(Recipe r, const Registries& registries,
                    std::shared_ptr<dist::Communicator> c)
    : recipe(std::move(r)),
      mesh(c, mesh_axes(recipe, c)),
      comm(mesh.size("dp") > 1 ? mesh.group("dp") : nullptr),
      rank(comm ? comm->rank() : 0),
      world(comm ? comm->size() : 1),
      tp_group(mesh.group("tp")),
      pp_group(mesh.group("pp")),
      tp_size(mesh.size("tp")),
      pp_size(mesh.size("pp")),
      run_dir(recipe.run_dir()),
      store(join_path(run_dir, "checkpoints"), recipe.checkpoint.keep, shard_layout()),
      progress(ProgressOptions{}) {
  const dist::RankInfo ranks = mesh.size() > 1 ? dist::discover_ranks() : dist::RankInfo{};
  // Ranks on this host share its cores (local_world 0: the launcher did
  // not say, e.g. SLURM; assume one rank per host).
  configure_threads(recipe.run.threads, mesh.size() > 1 ? std::max(1, ranks.local_world) : 1);
  device = resolve_device(recipe.run.device, ranks.local_rank, recipe.where("run.device"));
  STRATA_CHECK_T(ConfigError,
                 !(device.is_cuda() && comm && std::string(comm->backend()) == "mpi"),
                 recipe.where("distributed.backend"), ": distributed.backend=mpi "
                 "moves host memory only but run.device is ", device.str(),
                 "; use nccl (or auto) on GPUs");
  compute_dtype = precision_dtype(recipe.train.precision);
  STRATA_CHECK_T(ConfigError, compute_dtype != at::kHalf || device.is_cuda(),
                 recipe.where("train.precision"), ": train.precision=fp16 needs a GPU "
                 "(run.device: cuda); use bf16 on the CPU");
  scaler = LossScaler(LossScalerOptions{compute_dtype == at::kHalf});
  const DataSection& d = recipe.data;
  const bool lm = recipe.model.name == "gpt";
  STRATA_CHECK_T(ConfigError, lm == (d.name == "text"), recipe.where("data.name"),
                 ": data.name=", d.name, " with model.name=", recipe.model.name, "; ",
                 lm ? "gpt is a language model: use data.name=text"
                    : "text needs a language model: use model.name=gpt");
  load_data();

  setup_model_parallel(registries);
  model->set_checkpointing(checkpoint_plan(
      recipe.train.activation_checkpointing, recipe.train.checkpoint_every,
      model->checkpoint_units(), recipe.where("train.activation_checkpointing")));
  model->to(device);
  // The teacher is whole on every rank that computes the loss (a
  // pipeline's last stage).
  if (!recipe.distill.teacher.empty() && (!pipe || pipe->last())) {
    teacher = load_teacher(recipe, registries.models, input_shape, device);
    teacher_dtype = precision_dtype(recipe.distill.teacher_precision);
    log_info("distilling from ", recipe.distill.teacher, " (", recipe.distill.teacher_model.name,
             ", ", parameter_count(*teacher), " parameters): alpha ",
             format_double(recipe.distill.alpha), ", temperature ",
             format_double(recipe.distill.temperature));
  }
  const auto& make_optimizer = registries.optimizers.get(
      recipe.optimizer.name, recipe.where("optimizer.name"), "optimizer.name");
  optimizer = make_optimizer(recipe, *model);
  params = model->parameters();
  const auto hint_pairs = parse_hint_pairs(recipe.distill.hints, recipe.where("distill.hints"));
  if (!hint_pairs.empty()) {
    STRATA_CHECK_T(ConfigError, pp_size == 1, recipe.where("distill.hints"),
                   "distill.hints pairs student and teacher layers, which a pipeline splits "
                   "over ranks; use hints with distributed.pipeline_parallel.stages = 1");
    STRATA_CHECK_T(ConfigError, teacher != nullptr, recipe.where("distill.hints"),
                   "distill.hints needs a teacher: set distill.teacher");
    hints = std::make_shared<HintLoss>(hint_pairs, *model, *teacher,
                                       eval_inputs.slice(0, 0, 2).to(device));
    // The projections train with the student, under its optimizer's settings.
    optimizer->add_param_group(torch::optim::OptimizerParamGroup(
        hints->parameters(), optimizer->param_groups()[0].options().clone()));
    for (const auto& p : hints->parameters()) params.push_back(p);
    log_info("distillation hints ", recipe.distill.hints, " (", parameter_count(*hints),
             " projection parameters), weight ", format_double(recipe.distill.hint_weight));
  }

  if (model_parallel()) {
    // Each parameter's squared gradient norm counted once over the model:
    // a shard fully, a tensor replicated over tp by 1/tp on each, the tied
    // embedding's copy on the last stage not at all.
    for (const auto& p : model->named_parameters()) {
      const bool tied_copy = pp_size > 1 && !pipe->first() && p.key() == kGptTiedParameter;
      norm_weights.push_back(tied_copy ? 0.0 : splits.count(p.key()) ? 1.0 : 1.0 / tp_size);
    }
    norm_weights.resize(params.size(), 1.0 / tp_size);  // hint projections: replicated
  }

  const int64_t per_rank = train_samples / world;
  micro_per_epoch = per_rank / d.batch_size;
  STRATA_CHECK_T(ConfigError, micro_per_epoch >= recipe.train.grad_accum,
                 recipe.where("data.batch_size"), "data.batch_size=",
                 d.batch_size, " x train.grad_accum=", recipe.train.grad_accum,
                 " needs more than the ", per_rank, " training samples each of ",
                 world, " rank(s) reads per epoch; lower either");
  steps_per_epoch = micro_per_epoch / recipe.train.grad_accum;
  total_steps = recipe.train.max_steps > 0
                    ? recipe.train.max_steps
                    : recipe.train.epochs * steps_per_epoch;
  schedule = make_schedule(registries.schedules, recipe, total_steps);
  log_info("model ", recipe.model.name, " with ", parameter_count(*model),
           " parameters; ", train_samples, " training / ", eval_samples,
           text ? " validation windows of " + std::to_string(tokens_per_sample) + " bytes; "
                : " test samples; ",
           total_steps, " steps of ",
           d.batch_size * recipe.train.grad_accum * world, " samples (",
           world, " data-parallel rank(s)) on ", device.str(), " in ", recipe.train.precision,
           "; ", at::get_num_threads(), " threads per rank");
  if (mesh.size() > 1) log_info("device mesh ", mesh.describe());
}

void Trainer::Impl::setup_model_parallel(const Registries& registries) {
  const PipelineSection& pp = recipe.distributed.pipeline_parallel;
  // The student's part; input_shape stays whole (the teacher's).
  InputShape shape = input_shape;
  if (tp_size > 1) shape.tp = tp_group;
  if (pp_size > 1) {
    STRATA_CHECK_T(ConfigError, recipe.model.name == "gpt",
                   recipe.where("distributed.pipeline_parallel.stages"),
                   "distributed.pipeline_parallel.stages = ", pp_size, " splits a model's "
                   "layer list over stages; only model.name=gpt has one (not ",
                   recipe.model.name, "); use stages = 1");
    const std::vector<int64_t> weights = gpt_layer_parameters(recipe.model, input_shape.classes);
    std::vector<int64_t> counts = pp.layers;
    if (counts.empty()) {
      counts = dist::partition_layers(weights, pp_size);
    } else {
      int64_t sum = 0;
      for (int64_t c : counts) sum += c;
      const bool ok = static_cast<int>(counts.size()) == pp_size &&
                      *std::min_element(counts.begin(), counts.end()) >= 1 &&
                      sum == static_cast<int64_t>(weights.size());
      STRATA_CHECK_T(ConfigError, ok, recipe.where("distributed.pipeline_parallel.layers"),
                     "distributed.pipeline_parallel.layers = [", join(as_strings(counts), ", "),
                     "] must "
                     "give each of the ", pp_size, " stages at least one of the ", weights.size(),
                     " layers (embedding, ", recipe.model.n_layer, " blocks, head) and sum to ",
                     weights.size(), "; or leave it empty to balance by parameters");
    }
    const int s = pp_group->rank();
    for (int i = 0; i < s; ++i) shape.layer_begin += counts[i];
    shape.layer_end = shape.layer_begin + counts[s];
    pipe = std::make_unique<dist::PipelineExecutor>(pp_group, pp.schedule,
                                              static_cast<int>(pp.microbatches));
    STRATA_CHECK_T(ConfigError, recipe.data.batch_size % pp.microbatches == 0,
                   recipe.where("distributed.pipeline_parallel.microbatches"),
                   "data.batch_size = ", recipe.data.batch_size, " cannot be split into ",
                   pp.microbatches, " equal microbatches; pick a divisor of it");
    log_info("pipeline stage ", s, " of ", pp_size, ": layers [", shape.layer_begin, ", ",
             shape.layer_end, ") of ", weights.size(), " (", pp.schedule, ", ",
             pp.microbatches, " microbatches)");
  }
  torch::manual_seed(static_cast<uint64_t>(recipe.run.seed));
  const auto& make_model = registries.models.get(
      recipe.model.name, recipe.where("model.name"), "model.name");
  model = make_model(recipe.model, shape);
  splits = dist::tensor_parallel_shards(*model);
  STRATA_CHECK_T(ConfigError, tp_size == 1 || !splits.empty(),
                 recipe.where("distributed.tensor_parallel"), "distributed.tensor_parallel = ",
                 tp_size, " but model.name=", recipe.model.name, " has no tensor-parallel "
                 "layers (gpt has); use tensor_parallel = 1");
}

void Trainer::Impl::over_model(at::Tensor& t, dist::ReduceOp op) const {
  if (tp_size > 1) tp_group->all_reduce(t, op)->wait();
  if (pp_size > 1) pp_group->all_reduce(t, op)->wait();
}

ShardLayout Trainer::Impl::shard_layout() const {
  return ShardLayout{world, tp_size, pp_size, mesh.coord("tp"), mesh.coord("pp")};
}

// Evaluation is sharded: each rank scores a contiguous slice, the sums are
// all-reduced (every evaluation sample counted exactly once).
void Trainer::Impl::load_data() {
  const DataSection& d = recipe.data;
  if (d.name == "text") {
    const int64_t T = recipe.model.seq_len;
    TextCorpus corpus = load_text_corpus(d.text, d.val_fraction, T, d.train_subset);
    eval_samples = text_window_count(corpus.val, T);
    if (d.test_subset > 0) eval_samples = std::min(eval_samples, d.test_subset);
    auto [begin, end] = shard_range(eval_samples, rank, world);
    std::tie(eval_inputs, eval_targets) = text_windows(corpus.val, T, begin, end);
    train_samples = (static_cast<int64_t>(corpus.train.size()) - 1) / T;
    tokens_per_sample = T;
    input_shape.classes = 256;  // bytes
    text = std::make_shared<const std::vector<uint8_t>>(std::move(corpus.train));
  } else {
    auto train = std::make_shared<ImageDataset>(
        load_fashion_mnist(d.root, Split::kTrain, d.train_subset));
    ImageDataset test = load_fashion_mnist(d.root, Split::kTest, d.test_subset);
    auto [begin, end] = shard_range(test.size, rank, world);
    std::tie(eval_inputs, eval_targets) = dataset_tensors(test, begin, end);
    eval_samples = test.size;
    train_samples = train->size;
    input_shape = InputShape{train->channels, train->height, train->width, train->classes};
    images = train;
  }
  eval_inputs = eval_inputs.to(device);
  eval_targets = eval_targets.to(device);
}

std::unique_ptr<BatchSource> Trainer::Impl::make_loader(int64_t start_batch) const {
  const DataSection& d = recipe.data;
  if (text) {
    TextLoaderOptions o;
    o.batch_size = d.batch_size;
    o.seq_len = tokens_per_sample;
    o.seed = static_cast<uint64_t>(recipe.run.seed);
    o.rank = rank;
    o.world = world;
    o.batches_per_epoch = micro_per_epoch;
    o.pin_memory = device.is_cuda();
    return std::make_unique<TextLoader>(text, o, start_batch);
  }
  return std::make_unique<TrainLoader>(
      images,
      LoaderOptions{d.batch_size, d.prefetch, d.shuffle,
                    static_cast<uint64_t>(recipe.run.seed), rank, world,
                    d.augment.crop_padding, d.augment.hflip, device.is_cuda()},
      start_batch);
}

void Trainer::Impl::resume_or_start() {
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
    TrainState saved =
        is_sharded_checkpoint(path)
            ? load_sharded_checkpoint(path, shard_layout(), *model, *optimizer, splits,
                                      device, hints.get())
            : load_checkpoint(path, *model, *optimizer, device, hints.get());
    state.step = saved.step;
    state.micro_batches = map_data_position(saved);
    if (scaler.enabled() && saved.loss_scale > 0) {
      scaler.restore(saved.loss_scale, saved.loss_scale_growth);
    }
    last_saved_step = state.step;
    log_info("resumed from ", path, " at step ", state.step);
  }
  if (mesh.size() > 1) {
    // Every rank must resume from the same checkpoint.
    at::Tensor step = at::full({1}, state.step, at::TensorOptions(at::kLong).device(comm_device()));
    at::Tensor mine = step.clone();
    mesh.world()->broadcast(step, 0)->wait();
    STRATA_CHECK_T(Error, at::equal(step, mine), "rank ", rank,
                   " resumed at step ", state.step, " but rank 0 at step ",
                   step.item<int64_t>(), "; all ranks must see the same run "
                   "directory (run.dir on a shared filesystem)");
  }
  const std::string metrics_path = join_path(run_dir, "metrics.jsonl");
  if (writer()) MetricsWriter::rewind(metrics_path, state.step);
  metrics = std::make_unique<MetricsWriter>(metrics_path, writer());
}

// The checkpoint's data position in this run's layout. Same world size and
// batch: exact. Otherwise the same epoch and the same fraction of it, since
// a different number of ranks reads the data in a different order anyway.
int64_t Trainer::Impl::map_data_position(const TrainState& saved) const {
  if (saved.world == world && saved.micro_per_epoch == micro_per_epoch) {
    return saved.micro_batches;
  }
  const int64_t old_per_epoch = std::max<int64_t>(1, saved.micro_per_epoch);
  const int64_t epoch = saved.micro_batches / old_per_epoch;
  const int64_t within = saved.micro_batches % old_per_epoch;
  log_warn("resuming a checkpoint written by ", saved.world, " rank(s) with ",
           old_per_epoch, " micro-batches per epoch on ", world, " rank(s) with ",
           micro_per_epoch, ": continuing at the same point of epoch ", epoch,
           "; the data order differs from an uninterrupted run");
  return epoch * micro_per_epoch + within * micro_per_epoch / old_per_epoch;
}

void Trainer::Impl::setup_data_parallel() {
  if (!comm) return;
  dist::broadcast_parameters(*model, *comm);
  const DistributedSection& d = recipe.distributed;
  dist::GradientReducerOptions o;
  o.bucket_cap_bytes = static_cast<int64_t>(d.bucket_mb * (1 << 20));
  o.first_bucket_bytes = std::min<int64_t>(o.bucket_cap_bytes, 1 << 20);
  o.overlap = d.overlap;
  o.allow_unused = d.find_unused_parameters;
  o.hook = comm_hook(d.comm_hook);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  if (hints) {
    for (auto& p : hints->named_parameters()) named.emplace_back("distill.hints." + p.key(), p.value());
  }
  reducer = std::make_unique<dist::GradientReducer>(std::move(named), comm, o);
  log_info("data parallel over ", world, " ranks (", comm->backend(), "): ",
           reducer->buckets().size(),
           " gradient bucket(s), overlap ", d.overlap ? "on" : "off");
}

double Trainer::Impl::global_mean(const at::Tensor& local) const {
  at::Tensor t = local.to(comm_device(), at::kDouble).reshape({1}).clone();
  if (comm) comm->all_reduce(t, dist::ReduceOp::kAvg)->wait();
  // Pipeline: only the last stage has the loss.
  if (pp_size > 1) pp_group->broadcast(t, pp_size - 1)->wait();
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
  AutocastGuard amp(device.type(), compute_dtype);
  at::Tensor loss =
      teacher ? distillation_loss(logits, teacher_logits, targets, recipe.distill.alpha,
                                  recipe.distill.temperature)
              : F::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  if (hints) loss = loss + recipe.distill.hint_weight * hints->forward(*model, *teacher);
  return loss;
}

at::Tensor Trainer::Impl::train_step(BatchSource& loader, int64_t* epoch) {
  const int64_t accum = recipe.train.grad_accum;
  model->train();
  // Gradients are cleared to undefined rather than zero-filled (what
  // LibTorch 2.x's zero_grad() does by default; 1.13 can only zero-fill):
  // the first backward then stores its gradient instead of adding it to
  // zeros, one memory pass fewer per parameter. Same values.
  for (auto& p : params) p.mutable_grad() = at::Tensor();
  if (comm && recipe.distributed.broadcast_buffers) {
    dist::broadcast_buffers(*model, *comm);
  }
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions(at::kDouble).device(device));
  for (int64_t i = 0; i < accum; ++i) {
    Batch b = loader.next();
    ++state.micro_batches;
    *epoch = b.epoch;
    // Pinned batches: the copies overlap the previous step's GPU work.
    at::Tensor inputs = b.inputs.to(device, /*non_blocking=*/true);
    at::Tensor targets = b.targets.to(device, /*non_blocking=*/true);
    const bool last_micro = i + 1 == accum;
    // Data parallelism: only the step's last backward all-reduces.
    auto around_backward = [&](const std::function<void()>& backward, bool last) {
      if (reducer && !(last && last_micro)) {
        dist::GradientReducer::NoSync no_sync(*reducer);
        backward();
      } else {
        backward();
      }
    };
    auto scale = [&](const at::Tensor& l) {
      return scaler.scale_loss(accum > 1 ? l / static_cast<double>(accum) : l);
    };
    if (pipe) {
      const int64_t mb = inputs.size(0) / pipe->microbatches();
      dist::StageFunctions fns;
      fns.forward = [&](const at::Tensor& x, int) {
        AutocastGuard amp(device.type(), compute_dtype);
        return model->forward(x);
      };
      fns.loss = [&](const at::Tensor& y, int m) {
        return micro_loss(y, inputs.slice(0, m * mb, (m + 1) * mb),
                          targets.slice(0, m * mb, (m + 1) * mb));
      };
      fns.scale_loss = scale;
      fns.around_backward = around_backward;
      at::Tensor loss = pipe->train_step(inputs, fns);
      if (loss.defined()) loss_sum += loss;
      continue;
    }
    at::Tensor logits;
    {
      AutocastGuard amp(device.type(), compute_dtype);  // forward and loss only
      logits = model->forward(inputs);
    }
    at::Tensor loss = micro_loss(logits, inputs, targets);
    at::Tensor scaled = scale(loss);
    around_backward([&] { scaled.backward(); }, true);
    loss_sum += loss.detach();
  }
  if (reducer) reducer->finish();
  if (pipe) dist::sum_tied_gradients(*model, kGptTiedParameter, *pp_group);
  // Note [Mixed precision] in amp.h: unscale after the all-reduce (every
  // rank sees the same gradients, so all skip or step together), before
  // clipping; under model parallelism the ranks holding other parts agree.
  auto max_over_model = [this](at::Tensor& t) { over_model(t, dist::ReduceOp::kMax); };
  auto sum_over_model = [this](at::Tensor& t) { over_model(t, dist::ReduceOp::kSum); };
  if (scaler.enabled()) {
    scaler.unscale(params, model_parallel() ? max_over_model : std::function<void(at::Tensor&)>());
  }
  if (recipe.train.clip_grad_norm > 0) {
    if (model_parallel()) {
      clip_grad_norm(params, recipe.train.clip_grad_norm, norm_weights, sum_over_model);
    } else {
      clip_grad_norm(params, recipe.train.clip_grad_norm);
    }
  }
  set_learning_rate(*optimizer, schedule->lr(state.step));
  if (scaler.update()) {
    optimizer->step();
  } else {
    log_warn("step ", state.step + 1, ": inf/NaN gradients in fp16; step skipped, "
             "loss scale lowered to ", format_double(scaler.scale()));
  }
  ++state.step;
  return loss_sum / static_cast<double>(accum);
}

EvalResult Trainer::Impl::evaluate() {
  EvalSums e;
  if (pipe) {
    model->eval();
    e = evaluate_classifier(
        [&](const at::Tensor& x) {
          return pipe->forward(x, [&](const at::Tensor& in) { return model->forward(in); });
        },
        eval_inputs, eval_targets, recipe.data.eval_batch_size, compute_dtype);
    model->train();
  } else {
    e = evaluate_classifier(*model, eval_inputs, eval_targets, recipe.data.eval_batch_size,
                            compute_dtype);
  }
  at::Tensor sums = at::tensor({e.loss_sum, static_cast<double>(e.correct),
                                static_cast<double>(e.count)}, at::kDouble)
                       .to(comm_device());
  // Pipeline: the last stage scored the samples.
  if (pp_size > 1) pp_group->broadcast(sums, pp_size - 1)->wait();
  if (comm) comm->all_reduce(sums, dist::ReduceOp::kSum)->wait();
  sums = sums.cpu();
  const double total = sums[2].item<double>();
  return {sums[0].item<double>() / total, sums[1].item<double>() / total};
}

JsonObject Trainer::Impl::eval_record(const char* kind, const EvalResult& e) const {
  JsonObject r;
  r.add("kind", kind)
      .add("step", state.step)
      .add("split", text ? "validation" : "test")
      .add("loss", e.loss)
      .add("accuracy", e.accuracy);
  if (text) r.add("perplexity", std::exp(e.loss));
  return r;
}

void Trainer::Impl::log_eval(const EvalResult& e) {
  last_eval = e;
  last_eval_step = state.step;
  metrics->write(eval_record("eval", e));
  progress.clear();
  log_info("eval step ", state.step, ": ", text ? "validation" : "test", " loss ",
           format_double(e.loss), " accuracy ", format_double(e.accuracy),
           text ? " perplexity " + format_double(std::exp(e.loss)) : std::string());
}

void Trainer::Impl::save_checkpoint() {
  if (last_saved_step == state.step) return;
  last_saved_step = state.step;
  state.world = world;
  state.micro_per_epoch = micro_per_epoch;
  state.loss_scale = scaler.enabled() ? scaler.scale() : 0.0;
  state.loss_scale_growth = scaler.growth_tracker();
  if (model_parallel()) {
    // Note [Sharded checkpoints]: one shard per (pp, tp) coordinate, from
    // its dp = 0 rank; metadata once they all are on disk.
    if (mesh.coord("dp") == 0) {
      store.save(state, *model, *optimizer, hints.get(), splits);
    }
    mesh.world()->barrier()->wait();
    if (!writer()) return;
    store.publish(state.step);
    progress.clear();
    log_info("saved sharded checkpoint ", store.newest());
    return;
  }
  if (!writer()) return;
  const std::string path = store.save(state, *model, *optimizer, hints.get());
  progress.clear();
  log_info("saved checkpoint ", path);
}

TrainResult Trainer::Impl::run() {
  const auto t0 = Clock::now();
  if (writer()) {
    make_dirs(run_dir);
    atomic_write_file(join_path(run_dir, "recipe.yaml"), to_yaml(recipe));
  }
  resume_or_start();
  setup_data_parallel();
  progress = Progress(ProgressOptions{total_steps, recipe.run.log_every,
                                      writer() && stderr_is_terminal(),
                                      state.step});

  std::unique_ptr<BatchSource> loader = make_loader(state.micro_batches);
  const int64_t samples_per_step =  // global, over all ranks
      recipe.data.batch_size * recipe.train.grad_accum * world;
  const int64_t start_step = state.step;
  at::Tensor window_loss = at::zeros({}, at::TensorOptions(at::kDouble).device(device));
  int64_t window_steps = 0, epoch = 0;
  double shown_loss = std::nan(""), shown_rate = 0.0;  // last logged values
  auto window_t0 = Clock::now();
  while (state.step < total_steps) {
    window_loss += train_step(*loader, &epoch);
    ++window_steps;
    const bool last = state.step == total_steps;
    if (state.step % recipe.run.log_every == 0 || last) {
      const double loss = global_mean(window_loss) / window_steps;
      STRATA_CHECK_T(Error, std::isfinite(loss), "training loss became ",
                     loss, " by step ", state.step, "; lower optimizer.lr, "
                     "enable train.clip_grad_norm, or check the data");
      const double rate = window_steps * samples_per_step / seconds_since(window_t0);
      const double lr = schedule->lr(state.step - 1);
      JsonObject record;
      record.add("kind", "train")
          .add("step", state.step)
          .add("epoch", epoch)
          .add("loss", loss)
          .add("lr", lr)
          .add("samples_per_s", rate);
      if (text) record.add("tokens_per_s", rate * static_cast<double>(tokens_per_sample));
      if (scaler.enabled()) {
        record.add("loss_scale", scaler.scale()).add("skipped_steps", scaler.skipped_steps());
      }
      metrics->write(record.add("time_s", seconds_since(t0)));
      shown_loss = loss;
      shown_rate = rate;
      window_loss.zero_();
      window_steps = 0;
      window_t0 = Clock::now();
    }
    // Every step on a terminal (throttled there), with the last logged loss
    // and rate: no extra synchronisation per step.
    progress.update(state.step, epoch, shown_loss, schedule->lr(state.step - 1),
                    shown_rate, seconds_since(t0));
    // Evaluation and checkpoints are not training: keep them out of the
    // samples/s window.
    const auto pause_t0 = Clock::now();
    if (due(recipe.train.eval_every) && !last) log_eval(evaluate());
    if (due(recipe.checkpoint.every_steps) || last) save_checkpoint();
    window_t0 += Clock::now() - pause_t0;
  }
  progress.finish();
  if (last_eval_step != state.step) log_eval(evaluate());
  save_checkpoint();
  if (writer()) {
    // Model parallel: the full model, consolidated from the final checkpoint.
    if (model_parallel()) {
      save_state_dict(join_path(run_dir, "model.pt"), consolidate_checkpoint(store.newest()));
    } else {
      save_state_dict(join_path(run_dir, "model.pt"), *model);
    }
  }

  TrainResult result{last_eval.loss, last_eval.accuracy, state.step,
                     seconds_since(t0), run_dir};
  metrics->write(eval_record("summary", last_eval)
                     .add("steps_this_run", state.step - start_step)
                     .add("wall_s", result.wall_s));
  return result;
}

Trainer::Trainer(Recipe recipe, const Registries& registries,
                 std::shared_ptr<dist::Communicator> world)
    : impl_(std::make_unique<Impl>(std::move(recipe), registries,
                                   std::move(world))) {}
Trainer::~Trainer() = default;
TrainResult Trainer::run() { return impl_->run(); }

}  // namespace strata::train
