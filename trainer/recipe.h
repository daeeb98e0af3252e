// Typed training recipes.
//
// Note [Recipe schema]: every section lists its fields exactly once, in its
// `visit` member: key, member, constraint and a one-line meaning. The loader
// (parse + type check + range check + unknown-key detection), the emitter
// (--print-recipe and the run directory's recipe.yaml) and the schema table in
// recipes/README.md (checked by a test) all walk that one list, so a key cannot
// exist in one of them and be missing from another.
//
// A Visitor provides:
//   v.field(key, T& member, Constraint, help)   T: bool, int64_t, double,
//                                                std::string, std::vector<...>
//   v.section(key, Section& sub, help)
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "federated/vocabulary.h"

namespace strata::train {

// What values a field accepts, checked after the type.
struct Constraint {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;               // lo excluded
  std::vector<std::string> choices;   // for strings; empty = any
  bool ok(double v) const {
    return (lo_open ? v > lo : v >= lo) && v <= hi;
  }
  std::string describe() const;       // "> 0", "in [0, 1]", "one of: a, b"
};
inline Constraint any() { return {}; }
inline Constraint positive() {
  Constraint c;
  c.lo = 0;
  c.lo_open = true;
  return c;
}
inline Constraint at_least(double lo) {
  Constraint c;
  c.lo = lo;
  return c;
}
inline Constraint in_range(double lo, double hi) {
  Constraint c;
  c.lo = lo;
  c.hi = hi;
  return c;
}
inline Constraint in_range_open_low(double lo, double hi) {  // (lo, hi]
  Constraint c = in_range(lo, hi);
  c.lo_open = true;
  return c;
}
inline Constraint one_of(std::vector<std::string> choices) {
  Constraint c;
  c.choices = std::move(choices);
  return c;
}

struct RunSection {
  std::string name = "fashion_mnist";
  std::string dir;
  int64_t seed = 0;
  int64_t threads = 0;
  int64_t log_every = 50;
  std::string device = "auto";

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "run name; the run directory defaults to runs/<name>");
    v.field("dir", dir, any(), "run directory (empty: runs/<run.name>)");
    v.field("seed", seed, at_least(0), "seed for initialisation, data order and augmentation");
    v.field("threads", threads, at_least(0), "intra-op CPU threads per process (0: all cores / local ranks)");
    v.field("log_every", log_every, at_least(1), "steps between train records in metrics.jsonl and progress lines");
    v.field("device", device, any(), "auto | cpu | cuda | cuda:N (auto: this rank's GPU in CUDA builds with one visible, else cpu; cuda: GPU local_rank mod count)");
  }
};

// Hedge Backpropagation (model.name: hbp; trainer/models/hbp.h).
struct HbpSection {
  bool hedge = true;
  double beta = 0.99;
  double smoothing = 0.2;
  std::string hedge_loss = "minmax";

  template <class V>
  void visit(V& v) {
    v.field("hedge", hedge, any(), "learn the mixture weights alpha online (false: alpha stays on the deepest head, which is plain online backprop of the same network)");
    v.field("beta", beta, in_range_open_low(0, 1), "the hedge's discount: alpha(l) *= beta^loss(l) after every step");
    v.field("smoothing", smoothing, in_range(0, 1), "s: every alpha(l) is kept at least s / L (L hidden layers) before normalising");
    v.field("hedge_loss", hedge_loss, one_of({"minmax", "raw"}), "the loss the hedge discounts by: minmax (each step's head losses scaled to [0, 1] by their minimum and maximum, as the paper's code does) | raw (the heads' cross-entropy)");
  }
};

struct ModelSection {
  std::string name = "cnn";
  std::vector<int64_t> hidden = {256, 128};
  int64_t depth = 0;
  HbpSection hbp;
  std::vector<int64_t> channels = {32, 64};
  int64_t fc = 128;
  int64_t blocks = 2;
  double dropout = 0.0;
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t d_model = 128;
  int64_t seq_len = 128;
  int64_t vocab_size = 0;

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "a registered model (built in: mlp, cnn, resnet_small, hbp (Hedge Backpropagation, for online streams) and a transformer language model; strata-train --list prints them all)");
    v.field("hidden", hidden, at_least(1), "mlp, hbp: hidden layer widths");
    v.field("depth", depth, at_least(0), "mlp, hbp: this many hidden layers of width hidden[0] (0: hidden as listed)");
    v.field("channels", channels, at_least(1), "cnn: conv channels per stage; resnet_small: stage widths");
    v.field("fc", fc, at_least(1), "cnn: width of the hidden fully connected layer");
    v.field("blocks", blocks, at_least(1), "resnet_small: residual blocks per stage");
    v.field("dropout", dropout, in_range(0, 0.99), "dropout before the classifier (mlp: after every hidden layer; transformers: embeddings, attention and residual branches)");
    v.field("n_layer", n_layer, at_least(1), "transformers: blocks");
    v.field("n_head", n_head, at_least(1), "transformers: attention heads (divides d_model)");
    v.field("d_model", d_model, at_least(1), "transformers: embedding width");
    v.field("seq_len", seq_len, at_least(1), "transformers: context length in tokens (bytes)");
    v.field("vocab_size", vocab_size, at_least(0), "transformers: embedding rows (0: the data's, 256 for bytes; larger pads, e.g. 50304 as in the 124M-parameter benchmark recipe)");
    v.section("hbp", hbp, "Hedge Backpropagation: a classifier on every hidden layer, mixed by weights learned online");
  }
  // The hidden widths mlp and hbp build: depth copies of hidden[0], or hidden.
  std::vector<int64_t> hidden_widths() const {
    return depth > 0 ? std::vector<int64_t>(static_cast<size_t>(depth), hidden.at(0)) : hidden;
  }
};

struct AugmentSection {
  int64_t crop_padding = 0;
  bool hflip = false;

  template <class V>
  void visit(V& v) {
    v.field("crop_padding", crop_padding, in_range(0, 16), "random crop after zero padding by this many pixels (0: off)");
    v.field("hflip", hflip, any(), "random horizontal flip with probability 1/2");
  }
};

struct DataSection {
  std::string name = "fashion_mnist";
  std::string root = "/usr/share/datasets/fashion-mnist";
  std::string text = "/usr/share/games/fortunes";
  std::string tokens;
  int64_t vocab_size = 0;
  double val_fraction = 0.1;
  int64_t batch_size = 128;
  int64_t eval_batch_size = 1000;
  bool shuffle = true;
  int64_t prefetch = 4;
  int64_t train_subset = 0;
  int64_t test_subset = 0;
  int64_t instances = 500000;
  int64_t features = 50;
  int64_t stream_seed = 1;
  std::string stream_file;
  std::string drift = "permute";
  std::vector<int64_t> drift_at = {};
  int64_t drift_width = 0;
  AugmentSection augment;

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "a registered dataset: fashion_mnist (images), text (byte-level language modelling), tokens (a pre-tokenised corpus), syn8, cd1, cd2 (synthetic online streams, cd: concept drift), fmnist_drift (Fashion-MNIST as a drifting stream), stream_file (a recorded stream); strata-train --list prints them all");
    v.field("root", root, any(), "fashion_mnist: directory with the IDX files (*-ubyte.gz), e.g. from Debian's dataset-fashion-mnist");
    v.field("text", text, any(), "text: a text file, or a directory whose files are concatenated (default: Debian's fortunes package)");
    v.field("tokens", tokens, any(), "tokens: a directory holding train.bin and val.bin, uint16 token ids (nanoGPT's raw layout, or llm.c's with its 1024-byte header), memory-mapped");
    v.field("vocab_size", vocab_size, at_least(0), "tokens: the vocabulary (0: the largest id in the files + 1; e.g. 50257 for the BPE-tokenised files of nanoGPT and llm.c)");
    v.field("val_fraction", val_fraction, in_range(0.001, 0.5), "text: the last fraction of the bytes held out for validation");
    v.field("batch_size", batch_size, at_least(1), "samples per micro-batch per process");
    v.field("eval_batch_size", eval_batch_size, at_least(1), "samples per evaluation batch");
    v.field("shuffle", shuffle, any(), "reshuffle the training set every epoch (seeded by run.seed and the epoch)");
    v.field("prefetch", prefetch, at_least(1), "batches prepared ahead by the loader thread");
    v.field("train_subset", train_subset, at_least(0), "use only the first N training samples (0: all; text and tokens: tokens)");
    v.field("test_subset", test_subset, at_least(0), "evaluate on only the first N test samples (0: all; text and tokens: validation windows)");
    v.field("instances", instances, at_least(1), "syn8, cd1, cd2, fmnist_drift: instances in the stream (one pass of train.epochs = 1)");
    v.field("features", features, at_least(1), "syn8, cd1, cd2: features per instance");
    v.field("stream_seed", stream_seed, at_least(0), "syn8, cd1, cd2, fmnist_drift: the seed the stream's concepts and instances are drawn from (kept apart from run.seed, so runs compare on the same stream)");
    v.field("stream_file", stream_file, any(), "stream_file: a recorded stream (rows of float32 features and an int32 label, format in recipes/README.md), read in order");
    v.field("drift", drift, one_of({"permute", "rotate"}), "fmnist_drift: what changes at each drift point: permute (the classes' labels are permuted anew) | rotate (the images turn by another 90 degrees)");
    v.field("drift_at", drift_at, at_least(1), "fmnist_drift: the instances at which the concept changes, increasing (empty: no drift)");
    v.field("drift_width", drift_width, at_least(0), "fmnist_drift: 0 abrupt; else each drift is gradual over this many instances (an instance takes the new concept with probability rising linearly from 0 to 1)");
    v.section("augment", augment, "training-time augmentation");
  }
};

struct OptimizerSection {
  std::string name = "sgd";
  double lr = 0.05;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 5e-4;
  bool decay_norm_and_bias = false;
  std::vector<double> betas = {0.9, 0.999};
  double eps = 1e-8;

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "registered optimizer: sgd | adamw");
    v.field("lr", lr, positive(), "peak learning rate (reached after warmup)");
    v.field("momentum", momentum, in_range(0, 1), "sgd: momentum");
    v.field("nesterov", nesterov, any(), "sgd: Nesterov momentum");
    v.field("weight_decay", weight_decay, at_least(0), "L2 penalty (sgd) or decoupled decay (adamw)");
    v.field("decay_norm_and_bias", decay_norm_and_bias, any(), "also decay 1-D parameters (biases, norm scales)");
    v.field("betas", betas, in_range(0, 1), "adamw: [beta1, beta2]");
    v.field("eps", eps, positive(), "adamw: denominator epsilon");
  }
};

struct ScheduleSection {
  std::string name = "cosine";
  int64_t warmup_steps = 0;
  double min_lr = 0.0;
  int64_t step_every = 1000;
  double gamma = 0.1;

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "registered schedule: constant | step | cosine");
    v.field("warmup_steps", warmup_steps, at_least(0), "linear warmup from lr/warmup_steps to lr over this many steps");
    v.field("min_lr", min_lr, at_least(0), "cosine: final learning rate");
    v.field("step_every", step_every, at_least(1), "step: multiply lr by gamma every this many steps after warmup");
    v.field("gamma", gamma, positive(), "step: decay factor");
  }
};

// Magnitude pruning during training (Zhu & Gupta 2017; trainer/prune.h).
struct PruneSection {
  double sparsity = 0.0;
  std::string scope = "global";
  int64_t start_step = 0;
  int64_t end_step = 0;
  int64_t every = 100;
  std::string exclude;
  std::string structure = "weights";
  std::string norm = "l1";

  template <class V>
  void visit(V& v) {
    v.field("sparsity", sparsity, at_least(0), "final fraction of the pruned weights (structure weights) or of each layer's channels (structure channels) set to zero, in [0, 1) (0: off)");
    v.field("structure", structure, one_of({"weights", "channels"}), "weights: single weights by magnitude, every parameter of 2 or more dimensions (conv kernels, linear and embedding matrices); channels: whole conv output channels and linear units by the norm of their weights, with their BatchNorm entries, where every reader can lose them (strata-export then writes a smaller dense model)");
    v.field("norm", norm, one_of({"l1", "l2"}), "structure channels: the norm of a channel's weights that ranks it (the smallest are pruned)");
    v.field("scope", scope, one_of({"global", "layer"}), "global: one magnitude threshold over all pruned weights; layer: each weight tensor pruned to the sparsity on its own (structure channels: layer only, each layer loses that fraction of its channels)");
    v.field("start_step", start_step, at_least(0), "the step pruning starts at (sparsity 0 before)");
    v.field("end_step", end_step, at_least(0), "the step it reaches the final sparsity (0: the run's last, so the final model has it); the cubic ramp s(t) = s_f (1 - (1 - (t - start) / (end - start))^3) in between");
    v.field("every", every, at_least(1), "steps between mask updates on the ramp; pruned weights stay zero through every optimizer step");
    v.field("exclude", exclude, any(), "comma-separated substrings: weights whose names contain one are not pruned (e.g. 'wte,head')");
  }
};

// Quantization-aware training (trainer/qat.h).
struct QatSection {
  bool enabled = false;
  int64_t start_step = 0;
  int64_t freeze_observer_step = 0;
  int64_t freeze_bn_step = 0;
  bool per_channel = true;
  double averaging_constant = 0.01;
  bool reduce_range = false;

  template <class V>
  void visit(V& v) {
    v.field("enabled", enabled, any(), "train with int8 fake quantization of the weights and activations, so that the model converts to static int8 (strata-export --quantize qat) with the ranges it learned");
    v.field("start_step", start_step, at_least(0), "the step fake quantization and the activation observers start at (plain float training before)");
    v.field("freeze_observer_step", freeze_observer_step, at_least(0), "the step the activation ranges stop moving (0: never); after start_step");
    v.field("freeze_bn_step", freeze_bn_step, at_least(0), "the step BatchNorm switches from batch statistics to its running statistics, as the int8 model computes it (0: never)");
    v.field("per_channel", per_channel, any(), "weight scales per output channel (true) or one per tensor");
    v.field("averaging_constant", averaging_constant, in_range_open_low(0, 1), "the activation observers' moving average: range += c (batch range - range)");
    v.field("reduce_range", reduce_range, any(), "7-bit activations, for the FBGEMM and x86 int8 engines (their kernels would saturate on 8)");
  }
};

struct TrainSection {
  int64_t epochs = 10;
  int64_t max_steps = 0;
  int64_t grad_accum = 1;
  double clip_grad_norm = 0.0;
  int64_t eval_every = 0;
  std::string resume = "auto";
  std::string precision = "fp32";
  std::string activation_checkpointing = "none";
  int64_t checkpoint_every = 2;
  std::string init;
  bool prequential = false;
  PruneSection prune;
  QatSection qat;

  template <class V>
  void visit(V& v) {
    v.field("epochs", epochs, at_least(1), "passes over the training set");
    v.field("max_steps", max_steps, at_least(0), "optimizer steps to run (0: epochs x steps per epoch)");
    v.field("grad_accum", grad_accum, at_least(1), "micro-batches accumulated per optimizer step");
    v.field("clip_grad_norm", clip_grad_norm, at_least(0), "clip gradients to this global L2 norm (0: off)");
    v.field("eval_every", eval_every, at_least(0), "steps between evaluations (0: end of every epoch)");
    v.field("resume", resume, any(), "auto (continue from the newest checkpoint if any) | never | path to a checkpoint");
    v.field("precision", precision, one_of({"fp32", "bf16", "fp16"}), "autocast compute dtype; weights stay fp32; fp16 adds dynamic loss scaling (GPU only)");
    v.field("activation_checkpointing", activation_checkpointing, one_of({"none", "full", "every_k"}), "recompute activations in backward instead of keeping them: per unit of the model (transformer block, CNN stage); every_k: units 0, k, 2k, ...");
    v.field("checkpoint_every", checkpoint_every, at_least(1), "k of activation_checkpointing: every_k");
    v.field("init", init, any(), "start from these weights instead of the seeded initialisation: a model.pt of a run of the same model (fine-tuning a trained model, e.g. to prune it or train it quantization-aware); a resumed checkpoint takes precedence; empty: none");
    v.field("prequential", prequential, any(), "test-then-train: score every training micro-batch by its own training forward, before its step, into online records (cumulative and windowed error; always on for a stream without a held-out split, e.g. syn8)");
    v.section("prune", prune, "magnitude pruning during training: a cubic sparsity ramp, masks kept through optimizer steps and resumes");
    v.section("qat", qat, "quantization-aware training: int8 fake quantization with straight-through gradients, converted by strata-export --quantize qat");
  }
};

// Knowledge distillation (Hinton et al. 2015): a frozen teacher's softened
// logits guide the student.
struct DistillSection {
  std::string teacher;  // path to the teacher's model.pt; empty: off
  ModelSection teacher_model;
  double alpha = 0.5;
  double temperature = 4.0;
  std::string teacher_precision = "fp32";
  std::string hints;
  double hint_weight = 1.0;

  template <class V>
  void visit(V& v) {
    v.field("teacher", teacher, any(), "the teacher's weights: a model.pt (state dict) from a strata-train run; empty: no distillation");
    v.section("teacher_model", teacher_model, "the teacher's architecture (a registered model and its settings, as under model)");
    v.field("alpha", alpha, in_range(0, 1), "loss = alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)");
    v.field("temperature", temperature, positive(), "T: softens both distributions");
    v.field("teacher_precision", teacher_precision, one_of({"fp32", "bf16", "fp16"}), "the teacher's autocast dtype (it runs without autograd)");
    v.field("hints", hints, any(), "feature hints: 'STUDENT_UNIT:TEACHER_UNIT,...' (the models' unit names: stageN for CNNs, blockN for transformers), each adding hint_weight x MSE(learned projection of the student's output, the teacher's); empty: none");
    v.field("hint_weight", hint_weight, at_least(0), "beta: weight of the mean hint MSE in the loss");
  }
};

struct CheckpointSection {
  int64_t every_steps = 0;
  double every_minutes = 10.0;
  int64_t keep = 2;
  bool async = true;
  std::string requeue_signal = "SIGUSR1";

  template <class V>
  void visit(V& v) {
    v.field("every_steps", every_steps, at_least(0), "steps between checkpoints (0: end of every epoch); one is always written at the end");
    v.field("every_minutes", every_minutes, at_least(0), "also a checkpoint once this long passed since the last (rank 0's clock, agreed by all ranks; 0: off): bounds the work a crash loses");
    v.field("keep", keep, at_least(1), "newest checkpoints kept in <run.dir>/checkpoints");
    v.field("async", async, any(), "write periodic checkpoints on a background thread while training goes on (a copy in host memory is taken at the step); false: training waits for the files");
    v.field("requeue_signal", requeue_signal, one_of({"SIGUSR1", "SIGUSR2", "off"}), "the pre-emption signal (SLURM --signal=USR1@90): every rank checkpoints at the same step and exits 75, 'checkpointed for requeue'; SIGINT (130) and SIGTERM (143) do the same");
  }
};

struct MetricsSection {
  bool tensorboard = false;

  template <class V>
  void visit(V& v) {
    v.field("tensorboard", tensorboard, any(), "also write the numbers of metrics.jsonl as TensorBoard scalars (train/loss, eval/accuracy, version/accuracy, ...) to <run.dir>/events.out.tfevents.*: tensorboard --logdir runs/");
  }
};

// Pipeline parallelism: the model's layer list split into stages.
struct PipelineSection {
  int64_t stages = 1;
  int64_t microbatches = 1;
  std::string schedule = "1f1b";
  std::vector<int64_t> layers;

  template <class V>
  void visit(V& v) {
    v.field("stages", stages, at_least(1), "pipeline stages (pp); world = dp x tensor_parallel x stages, dp inferred");
    v.field("microbatches", microbatches, at_least(1), "microbatches each data.batch_size batch is split into (must divide it); the bubble is (stages - 1) / microbatches");
    v.field("schedule", schedule, one_of({"gpipe", "1f1b"}), "gpipe: all forwards then all backwards (holds every microbatch's activations); 1f1b: one forward one backward (holds at most stages)");
    v.field("layers", layers, any(), "layers per stage, first to last, of the model's layer list (transformers: embedding, n_layer blocks, head, so they sum to n_layer + 2); empty: balanced by parameters");
  }
};

struct DistributedSection {
  std::string backend = "auto";
  double timeout_s = 60.0;
  double bucket_mb = 25.0;
  bool overlap = true;
  bool find_unused_parameters = false;
  std::string comm_hook = "none";
  bool broadcast_buffers = true;
  int64_t tensor_parallel = 1;
  PipelineSection pipeline_parallel;

  template <class V>
  void visit(V& v) {
    v.field("backend", backend, one_of({"auto", "gloo", "mpi", "nccl"}), "communication backend (auto: nccl in CUDA builds with a GPU; mpi when mpirun launched the run, the fastest on CPU hosts (bench/results/ddp_cpu.md); else gloo)");
    v.field("timeout_s", timeout_s, positive(), "seconds any collective may take before every rank fails with a message");
    v.field("bucket_mb", bucket_mb, positive(), "gradient bucket capacity in MiB (the first bucket is 1 MiB)");
    v.field("overlap", overlap, any(), "all-reduce each bucket during backward as soon as it is full");
    v.field("find_unused_parameters", find_unused_parameters, any(), "tolerate parameters that get no gradient (zeros are averaged)");
    v.field("comm_hook", comm_hook, one_of({"none", "fp16", "bf16"}), "compress gradients for the all-reduce");
    v.field("broadcast_buffers", broadcast_buffers, any(), "copy rank 0's buffers (BatchNorm statistics) to all ranks before every step");
    v.field("tensor_parallel", tensor_parallel, at_least(1), "tensor-parallel ranks per layer (Megatron-style; models with split layers, e.g. the transformer: must divide model.n_head and the vocabulary)");
    v.section("pipeline_parallel", pipeline_parallel, "pipeline parallelism: stages, microbatches, schedule");
  }
};


// Federated runs (strata-fedserver, strata-edge, strata-fedsim). The model,
// data and optimizer sections describe the model and the clients' local
// training; strata-train ignores this section.
struct FedSyncSection {
  int64_t rounds = 50;
  int64_t clients_per_round = 10;
  double over_selection = 0.2;
  int64_t min_updates = 0;
  double round_timeout_s = 300.0;
  int64_t max_round_extensions = 3;
  int64_t local_epochs = 1;

  template <class V>
  void visit(V& v) {
    v.field("rounds", rounds, at_least(1), "rounds to run");
    v.field("clients_per_round", clients_per_round, at_least(1), "K: updates aggregated per round");
    v.field("over_selection", over_selection, in_range(0, 10), "select ceil(K x (1 + this)) clients per round so that dropouts do not stall it; updates after the K-th are refused");
    v.field("min_updates", min_updates, at_least(0), "at the round deadline, aggregate if at least this many updates arrived (0: K), else select more clients and keep waiting");
    v.field("round_timeout_s", round_timeout_s, positive(), "round deadline in seconds");
    v.field("max_round_extensions", max_round_extensions, at_least(0), "deadlines a round is extended (selecting more clients) while fewer than min_updates valid updates arrived; then it closes with what it has, or with none (the version repeats the model)");
    v.field("local_epochs", local_epochs, at_least(1), "passes over its local data a selected client makes");
  }
};

struct FedAsyncSection {
  int64_t versions = 100;
  int64_t buffer_size = 10;
  double staleness_exponent = 0.5;
  int64_t max_staleness = 20;
  int64_t samples_per_update = 320;

  template <class V>
  void visit(V& v) {
    v.field("versions", versions, at_least(1), "aggregations to run");
    v.field("buffer_size", buffer_size, at_least(1), "K: buffered updates per aggregation (FedBuff)");
    v.field("staleness_exponent", staleness_exponent, at_least(0), "a in the staleness weight (1 + staleness)^-a");
    v.field("max_staleness", max_staleness, at_least(0), "updates more versions behind than this are refused");
    v.field("samples_per_update", samples_per_update, at_least(1), "an online client submits after learning from this many new samples");
  }
};

struct FedServerSection {
  std::string address = "127.0.0.1:0";
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  double norm_bound = 0.0;
  bool clip = true;
  int64_t max_num_samples = 1000000;
  int64_t max_message_mb = 256;
  int64_t max_inflight_updates = 4;
  int64_t max_waiting_updates = 16;
  int64_t stream_window_kb = 256;
  int64_t max_uploads_per_client = 1;
  int64_t max_polls_per_client = 2;
  double first_message_timeout_s = 10.0;
  double stream_idle_timeout_s = 30.0;
  double contended_idle_timeout_s = 2.0;
  double progress_every_s = 10.0;
  int64_t eval_every = 1;
  std::string publish = "none";
  int64_t publish_calibration_samples = 256;

  template <class V>
  void visit(V& v) {
    v.field("address", address, any(), "host:port the server listens on (port 0: any free port); TLS is required unless the host is loopback");
    v.field("tls_cert", tls_cert, any(), "server certificate chain (PEM)");
    v.field("tls_key", tls_key, any(), "server private key (PEM)");
    v.field("tls_ca", tls_ca, any(), "clients: CA certificate (PEM) to verify the server (empty: plaintext, loopback only)");
    v.field("norm_bound", norm_bound, at_least(0), "L2 bound on an update (0: none)");
    v.field("clip", clip, any(), "scale updates above norm_bound down to it (true) or refuse them (false)");
    v.field("max_num_samples", max_num_samples, at_least(1), "largest num_samples a client may claim for one update");
    v.field("max_message_mb", max_message_mb, at_least(1), "largest update a client may send, in MiB");
    v.field("max_inflight_updates", max_inflight_updates, at_least(1), "updates received at the same time; other senders wait (bounds the server's memory whatever the number of clients)");
    v.field("max_waiting_updates", max_waiting_updates, at_least(0), "senders that may wait for an ingest slot; beyond them a sender is told UNAVAILABLE (busy) and retries with backoff");
    v.field("stream_window_kb", stream_window_kb, at_least(0), "HTTP/2 receive window per stream: what a waiting sender can park in server memory (fixed; 0: gRPC's adaptive windows, several MiB per stream)");
    v.field("max_uploads_per_client", max_uploads_per_client, at_least(1), "uploads one client may have open (receiving or waiting) at once; more are told UNAVAILABLE (busy) and retry");
    v.field("max_polls_per_client", max_polls_per_client, at_least(1), "GetModel long polls one client may have open at once; more are told UNAVAILABLE (busy) and retry");
    v.field("first_message_timeout_s", first_message_timeout_s, in_range(0.1, 3600), "an upload that sends no first chunk within this long is ended (DEADLINE_EXCEEDED)");
    v.field("stream_idle_timeout_s", stream_idle_timeout_s, in_range(0.1, 3600), "an upload that sends no chunk for this long is ended (DEADLINE_EXCEEDED) and its slot freed");
    v.field("contended_idle_timeout_s", contended_idle_timeout_s, in_range(0.1, 3600), "while senders wait for an ingest slot, an upload that sent no chunk for this long is ended and its slot handed on (stalled streams cannot hold every slot)");
    v.field("progress_every_s", progress_every_s, at_least(0), "the server prints a progress line (round or buffer fill, clients, accepted and refused) this often (0: never)");
    v.field("eval_every", eval_every, at_least(1), "evaluate the global model on the test set every this many versions");
    v.field("publish", publish, one_of({"none", "int8_static", "int8_dynamic"}), "also serve each global version as a strata-int8 package (GetModel format strata-int8: strata-edge infer --server) for clients that only infer; int8_static calibrates on the server's evaluation data");
    v.field("publish_calibration_samples", publish_calibration_samples, at_least(1), "publish int8_static: evaluation samples the activation ranges are calibrated on");
  }
};

struct FedClientSection {
  std::string encoding = "fp32";
  double topk_fraction = 0.01;
  int64_t max_retries = 8;
  std::vector<std::string> keep_local = {};

  template <class V>
  void visit(V& v) {
    v.field("encoding", encoding, one_of({"fp32", "fp16", "int8", "topk"}), "how clients encode their updates");
    v.field("topk_fraction", topk_fraction, in_range(0, 1), "topk: share of each tensor's elements sent");
    v.field("max_retries", max_retries, at_least(0), "a client's attempts per call after a transient failure (exponential backoff)");
    v.field("keep_local", keep_local, any(), "model tensors (by name) a client keeps its own values of: each update starts from the server's model with these replaced by the client's own, e.g. [alpha] keeps an hbp client's hedge weights local (the server still averages what clients send, for its evaluation and new clients)");
  }
};

struct FedSimSection {
  int64_t clients = 100;
  std::string partition = "dirichlet";
  double dirichlet_alpha = 0.5;
  double malicious_fraction = 0.0;
  std::string attack = "scaled";
  double attack_scale = 100.0;
  int64_t parallel_clients = 2;
  std::string drift = "none";
  int64_t drift_every = 5000;
  int64_t concepts = 3;
  double dropout = 0.0;

  template <class V>
  void visit(V& v) {
    v.field("clients", clients, at_least(1), "edge clients simulated (each gets a shard of the training set)");
    v.field("partition", partition, one_of({"iid", "dirichlet"}), "how the training set is split over clients");
    v.field("dirichlet_alpha", dirichlet_alpha, positive(), "dirichlet: concentration (small: each client sees few classes)");
    v.field("malicious_fraction", malicious_fraction, in_range(0, 1), "share of clients that send corrupted updates");
    v.field("attack", attack, one_of({"scaled", "sign_flip", "random"}), "what malicious clients send: their update x attack_scale, x -attack_scale, or noise of that scale");
    v.field("attack_scale", attack_scale, positive(), "magnitude of the corruption");
    v.field("parallel_clients", parallel_clients, at_least(1), "clients that may train at the same time (threads)");
    v.field("drift", drift, one_of({"none", "permute", "rotate"}), "concept drift of every simulated client's stream (strata-fedsim, strata-edge --shard): none | permute (labels permuted) | rotate (images turned by 90 degrees), at the client's own drift points");
    v.field("drift_every", drift_every, at_least(1), "drift: mean instances between a client's drifts (each gap drawn uniformly from 0.5 to 1.5 times this, seeded per client)");
    v.field("concepts", concepts, at_least(2), "drift: concepts a client's stream cycles through (the first is the data as it is; rotate: at most 4)");
    v.field("dropout", dropout, in_range(0, 1), "share of a simulated client's updates after which it drops out of the round (secure aggregation: once its masked input is in, before unmasking; a plain round does not notice)");
  }
};

struct FedPrivacySection {
  std::string mode = "none";
  double clip_norm = 1.0;
  double noise_multiplier = 1.0;
  int64_t population = 0;
  bool adaptive_clip = false;
  double target_quantile = 0.5;
  double clip_lr = 0.2;
  bool client_clip = false;
  double target_epsilon = 0.0;
  double delta = 1e-5;

  template <class V>
  void visit(V& v) {
    v.field("mode", mode, one_of({"none", "central", "local"}), "none | central: client-level differential privacy by the server (DP-FedAvg): each update clipped to clip_norm, Gaussian noise of std noise_multiplier x clip_norm on their sum, which is divided by the updates an aggregation expects; epsilon in every version record | local: each client clips its own update to clip_norm and adds noise of std noise_multiplier x clip_norm before it leaves the device (the client's recipe decides; the server adds none); each client accounts its own epsilon");
    v.field("clip_norm", clip_norm, positive(), "C, the L2 norm every update is clipped to (central with adaptive_clip: where it starts)");
    v.field("noise_multiplier", noise_multiplier, at_least(0), "z: central, the noise std on the sum of clipped updates is z x C (strata-fedserver privacy plans it for a budget); local, every element of a client's update gets noise of std z x C (must be > 0)");
    v.field("population", population, at_least(0), "central: the clients an aggregation's updates are sampled from, for the sampling rate q = updates per aggregation / population (0: strata-fedsim's federated.sim.clients; strata-fedserver needs it)");
    v.field("adaptive_clip", adaptive_clip, any(), "central: track the target_quantile of update norms (Andrew et al. 2021) instead of a fixed clip_norm");
    v.field("target_quantile", target_quantile, in_range(0, 1), "adaptive_clip: the share of updates the clip norm should leave unclipped");
    v.field("clip_lr", clip_lr, positive(), "adaptive_clip: the geometric step of the clip norm per aggregation");
    v.field("client_clip", client_clip, any(), "central: clients clip their updates to clip_norm before sending (the server tells them, ClientConfig.clip_norm) and the server refuses any update above it (not with adaptive_clip)");
    v.field("target_epsilon", target_epsilon, at_least(0), "the privacy budget (0: none); central: training stops cleanly before an aggregation would exceed it; local: a client stops submitting before an update would exceed its own");
    v.field("delta", delta, in_range(0, 1), "delta of (epsilon, delta)");
  }
};

struct FedSecAggSection {
  bool enabled = false;
  int64_t neighbours = 0;
  int64_t threshold = 0;
  double clip_range = 8.0;
  int64_t quant_bits = 22;
  int64_t max_samples = 0;
  double stage_timeout_s = 30.0;

  template <class V>
  void visit(V& v) {
    v.field("enabled", enabled, any(), "secure aggregation (SecAgg+, sync mode): the server learns only the sum of a round's updates -- clients mask them with pairwise and self masks that cancel in the sum, surviving up to threshold dropouts (X25519 keys, Shamir shares of the mask seeds)");
    v.field("neighbours", neighbours, at_least(0), "k: the clients each client shares keys and mask seeds with, on a random ring (SecAgg+; even; 0: every other client of the round)");
    v.field("threshold", threshold, at_least(0), "t: shares that rebuild a client's secret, so a client's mask can be removed while at most k - t of its neighbours drop out (0: a majority of the neighbours, k / 2 + 1)");
    v.field("clip_range", clip_range, positive(), "R: every value of an update (times its weight) is clipped to [-R, R] before quantisation");
    v.field("quant_bits", quant_bits, in_range(1, 31), "values are quantised (stochastic rounding) onto 2^bits - 1 levels of [-R, R]; a round of n clients needs n (2^bits - 1) < 2^32");
    v.field("max_samples", max_samples, at_least(0), "an update is weighted min(num_samples, max_samples) / max_samples before masking, so the result is the sample-weighted mean (set it near the largest client's samples: small weights lose precision to the quantisation); 0: every update weighs the same");
    v.field("stage_timeout_s", stage_timeout_s, in_range(0.1, 3600), "the shares, masked-input and unmasking stages each close after this long with whoever answered (the keys stage, which waits for local training, after sync.round_timeout_s)");
  }
};

struct FederatedSection {
  std::string mode = "sync";
  std::string strategy = "fedavg";
  std::string server_optimizer = "auto";
  double server_lr = 1.0;
  double server_momentum = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
  double proximal_mu = 0.0;
  double trim_fraction = 0.1;
  int64_t byzantine = 1;
  int64_t multi_krum_keep = 0;
  double median_norm_clip = 0.0;
  int64_t bucket_size = 1;
  double nnm_fraction = 0.0;
  FedSyncSection sync;
  FedAsyncSection async;
  FedServerSection server;
  FedClientSection client;
  FedPrivacySection privacy;
  FedSecAggSection secagg;
  FedSimSection sim;

  template <class V>
  void visit(V& v) {
    v.field("mode", mode, one_of(fed::mode_names()), "sync: rounds of selected clients; async: online clients, buffered aggregation (FedBuff)");
    v.field("strategy", strategy, one_of(fed::strategy_names()), "aggregation strategy");
    v.field("server_optimizer", server_optimizer, one_of(fed::server_optimizer_names()), "optimizer applying the aggregate (auto: the strategy's)");
    v.field("server_lr", server_lr, positive(), "server learning rate (1 with sgd is plain FedAvg)");
    v.field("server_momentum", server_momentum, in_range(0, fed::kMaxDecay), "sgd server optimizer: momentum beta on the aggregate (FedAvgM); 0: none");
    v.field("beta1", beta1, in_range(0, fed::kMaxDecay), "fedadam/fedyogi/fedadagrad: first-moment decay");
    v.field("beta2", beta2, in_range(0, fed::kMaxDecay), "fedadam/fedyogi: second-moment decay");
    v.field("tau", tau, positive(), "fedadam/fedyogi/fedadagrad: adaptivity (denominator offset)");
    v.field("proximal_mu", proximal_mu, at_least(0), "FedProx: clients add mu/2 ||w - w_global||^2 (0: off)");
    v.field("trim_fraction", trim_fraction, in_range(0, fed::kMaxRobustFraction), "trimmed_mean: share dropped at each end per coordinate");
    v.field("byzantine", byzantine, at_least(0), "krum/multi_krum: f, the corrupted updates tolerated");
    v.field("multi_krum_keep", multi_krum_keep, at_least(0), "multi_krum: updates averaged (0: n - f)");
    v.field("median_norm_clip", median_norm_clip, at_least(0), "before aggregating, scale each update down to at most this multiple of the batch's median update norm (0: off)");
    v.field("bucket_size", bucket_size, at_least(1), "robust rules aggregate the means of random buckets of this many updates (Karimireddy et al. 2022; 1: off)");
    v.field("nnm_fraction", nnm_fraction, in_range(0, fed::kMaxRobustFraction), "robust rules aggregate each update mixed with its nearest neighbours: the mean of the n - floor(f n) updates closest to it, f this fraction of corrupt updates tolerated (Allouah et al. 2023; 0: off)");
    v.section("sync", sync, "sync mode: rounds");
    v.section("async", async, "async mode: buffered aggregation of online updates");
    v.section("server", server, "address, TLS, validation, evaluation");
    v.section("client", client, "edge clients: update encoding, retries");
    v.section("sim", sim, "strata-fedsim: clients, partition, attackers");
    v.section("privacy", privacy, "differential privacy and its accounting");
    v.section("secagg", secagg, "secure aggregation: the server sees only sums");
  }
};

struct Recipe {
  RunSection run;
  ModelSection model;
  DataSection data;
  OptimizerSection optimizer;
  ScheduleSection schedule;
  TrainSection train;
  CheckpointSection checkpoint;
  MetricsSection metrics;
  DistillSection distill;
  DistributedSection distributed;
  FederatedSection federated;

  // Where each key that was set came from: "recipes/a.yaml:12" or
  // "command-line override 'optimizer.lr=0.1'". Keys left at their default
  // are absent. Lets later checks (registry names) point at the line.
  std::map<std::string, std::string> origin;

  template <class V>
  void visit(V& v) {
    v.section("run", run, "naming, seeding, threads, logging");
    v.section("model", model, "network architecture");
    v.section("data", data, "dataset, batching, augmentation");
    v.section("optimizer", optimizer, "optimizer and its hyper-parameters");
    v.section("schedule", schedule, "learning-rate schedule");
    v.section("train", train, "loop length, accumulation, clipping, eval, resume");
    v.section("checkpoint", checkpoint, "checkpoint cadence and retention");
    v.section("metrics", metrics, "what besides metrics.jsonl records the run");
    v.section("distill", distill, "knowledge distillation from a frozen teacher");
    v.section("distributed", distributed, "data, tensor and pipeline parallelism across processes");
    v.section("federated", federated, "federated server, edge clients and simulation");
  }

  // "recipes/a.yaml:12: " or "" for a key left at its default.
  std::string where(const std::string& key_path) const;
  // The run directory: run.dir or runs/<run.name>.
  std::string run_dir() const;
};

// Loads `path` and applies `overrides` ("a.b=value", typed like the file).
// Throws ConfigError naming file:line, key path and the fix.
Recipe load_recipe(const std::string& path,
                   const std::vector<std::string>& overrides = {});
// Same, from text; `source` names it in messages.
Recipe parse_recipe(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});
// The resolved recipe as YAML (every key, defaults included).
std::string to_yaml(const Recipe& recipe);
// Markdown table of every key: path, type, default, allowed, meaning.
std::string schema_markdown();

}  // namespace strata::train
