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

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "run name; the run directory defaults to runs/<name>");
    v.field("dir", dir, any(), "run directory (empty: runs/<run.name>)");
    v.field("seed", seed, at_least(0), "seed for initialisation, data order and augmentation");
    v.field("threads", threads, at_least(0), "intra-op CPU threads per process (0: all cores / local ranks)");
    v.field("log_every", log_every, at_least(1), "steps between train records in metrics.jsonl and progress lines");
  }
};

struct ModelSection {
  std::string name = "cnn";
  std::vector<int64_t> hidden = {256, 128};
  std::vector<int64_t> channels = {32, 64};
  int64_t fc = 128;
  int64_t blocks = 2;
  double dropout = 0.0;

  template <class V>
  void visit(V& v) {
    v.field("name", name, any(), "registered model: mlp | cnn | resnet_small");
    v.field("hidden", hidden, at_least(1), "mlp: hidden layer widths");
    v.field("channels", channels, at_least(1), "cnn: conv channels per stage; resnet_small: stage widths");
    v.field("fc", fc, at_least(1), "cnn: width of the hidden fully connected layer");
    v.field("blocks", blocks, at_least(1), "resnet_small: residual blocks per stage");
    v.field("dropout", dropout, in_range(0, 0.99), "dropout before the classifier (mlp: after every hidden layer)");
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
  int64_t batch_size = 128;
  int64_t eval_batch_size = 1000;
  bool shuffle = true;
  int64_t prefetch = 4;
  int64_t train_subset = 0;
  int64_t test_subset = 0;
  AugmentSection augment;

  template <class V>
  void visit(V& v) {
    v.field("name", name, one_of({"fashion_mnist"}), "dataset");
    v.field("root", root, any(), "directory with the IDX files (*-ubyte.gz), e.g. from Debian's dataset-fashion-mnist");
    v.field("batch_size", batch_size, at_least(1), "samples per micro-batch per process");
    v.field("eval_batch_size", eval_batch_size, at_least(1), "samples per evaluation batch");
    v.field("shuffle", shuffle, any(), "reshuffle the training set every epoch (seeded by run.seed and the epoch)");
    v.field("prefetch", prefetch, at_least(1), "batches prepared ahead by the loader thread");
    v.field("train_subset", train_subset, at_least(0), "use only the first N training samples (0: all)");
    v.field("test_subset", test_subset, at_least(0), "evaluate on only the first N test samples (0: all)");
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

struct TrainSection {
  int64_t epochs = 10;
  int64_t max_steps = 0;
  int64_t grad_accum = 1;
  double clip_grad_norm = 0.0;
  int64_t eval_every = 0;
  std::string resume = "auto";

  template <class V>
  void visit(V& v) {
    v.field("epochs", epochs, at_least(1), "passes over the training set");
    v.field("max_steps", max_steps, at_least(0), "optimizer steps to run (0: epochs x steps per epoch)");
    v.field("grad_accum", grad_accum, at_least(1), "micro-batches accumulated per optimizer step");
    v.field("clip_grad_norm", clip_grad_norm, at_least(0), "clip gradients to this global L2 norm (0: off)");
    v.field("eval_every", eval_every, at_least(0), "steps between evaluations (0: end of every epoch)");
    v.field("resume", resume, any(), "auto (continue from the newest checkpoint if any) | never | path to a checkpoint");
  }
};

struct CheckpointSection {
  int64_t every_steps = 0;
  int64_t keep = 2;

  template <class V>
  void visit(V& v) {
    v.field("every_steps", every_steps, at_least(0), "steps between checkpoints (0: end of every epoch); one is always written at the end");
    v.field("keep", keep, at_least(1), "newest checkpoints kept in <run.dir>/checkpoints");
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

  template <class V>
  void visit(V& v) {
    v.field("backend", backend, one_of({"auto", "gloo", "mpi", "nccl"}), "communication backend (auto: nccl in CUDA builds with a GPU, else gloo; mpi needs mpirun and is the fastest on one CPU host; see bench/results/ddp_cpu.md)");
    v.field("timeout_s", timeout_s, positive(), "seconds any collective may take before every rank fails with a message");
    v.field("bucket_mb", bucket_mb, positive(), "gradient bucket capacity in MiB (the first bucket is 1 MiB)");
    v.field("overlap", overlap, any(), "all-reduce each bucket during backward as soon as it is full");
    v.field("find_unused_parameters", find_unused_parameters, any(), "tolerate parameters that get no gradient (zeros are averaged)");
    v.field("comm_hook", comm_hook, one_of({"none", "fp16", "bf16"}), "compress gradients for the all-reduce");
    v.field("broadcast_buffers", broadcast_buffers, any(), "copy rank 0's buffers (BatchNorm statistics) to all ranks before every step");
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
  DistributedSection distributed;

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
    v.section("distributed", distributed, "data parallelism across processes");
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
