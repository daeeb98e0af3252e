// strata-export: a trained model as a file another runtime loads.
//
//   strata-export RUN_DIR [--format safetensors|torchscript|onnx] [--out FILE]
//                 [--quantize dynamic|static|qat [--observer minmax|moving_average|percentile]
//                  [--calibration-batches N] [--per-tensor] [--engine E]] [--keep-channels]
//                 [--threads N]
//
// Reads RUN_DIR/model.pt (what strata-train and strata-fedsim leave) and
// writes it in the chosen format, then reads the file back and checks it:
//   safetensors  the weights (the Hugging Face format, trainer/safetensors.h),
//                by default RUN_DIR/model.safetensors, checked bit for bit;
//   torchscript  the model (trainer/torchscript.h: rebuilt from
//                RUN_DIR/recipe.yaml, traced on evaluation samples), by
//                default RUN_DIR/model.torchscript.pt, loadable by C++
//                torch::jit::load and Python torch.jit.load; reloaded, its
//                outputs and accuracy on the recipe's evaluation split are
//                compared with the model's; with --quantize, int8
//                (trainer/quantize.h), by default RUN_DIR/model.int8.torchscript.pt,
//                with BatchNorm folded, compared with the float model for
//                accuracy, argmax agreement, size and latency; --quantize qat
//                is static int8 with the activation ranges that
//                quantization-aware training learned (RUN_DIR/qat.pt,
//                trainer/qat.h) instead of calibration.
//   onnx         the model (trainer/onnx.h), by default RUN_DIR/model.onnx
//                (RUN_DIR/model.int8.onnx with --quantize static: QDQ),
//                opset 17, checked by the ONNX checker; onnxruntime runs it.
// A run trained with structured pruning (train.prune.structure=channels)
// exports as a smaller dense model: the channels it zeroed are deleted from
// the TorchScript, int8 and ONNX graphs (trainer/channels.h), and the report
// compares its size and latency with the unpruned model's (--keep-channels:
// the trained shapes).
// It prints a table of the tensors and writes the report RUN_DIR/export.json.
//
// Exit codes: 0 written and verified, 2 usage error (no such run, no
// model.pt or recipe.yaml, weights that do not fit the recipe's model), 1
// runtime failure.
#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <iomanip>
#include <optional>
#include <iostream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "strata/config.h"
#include "trainer/channels.h"
#include "trainer/checkpoint.h"
#include "trainer/distill.h"
#include "trainer/edge_model.h"
#include "trainer/cli.h"
#include "trainer/recipe.h"
#include "trainer/evaluate.h"
#include "trainer/qat.h"
#include "trainer/quantize.h"
#if STRATA_HAVE_ONNX
#include "trainer/onnx.h"
#endif
#include "trainer/safetensors.h"
#include "trainer/torchscript.h"
#include "trainer/trainer.h"

namespace st = strata::train;

namespace {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes the weights as safetensors and checks every tensor read back bit for bit.
void export_safetensors(const std::string& run_dir, const Tensors& tensors, const std::string& out,
                        nlohmann::ordered_json& report) {
  std::map<std::string, std::string> metadata{{"format", "pt"},
                                              {"producer", std::string("strata ") + STRATA_VERSION}};
  const std::string recipe_path = strata::join_path(run_dir, "recipe.yaml");
  if (strata::path_exists(recipe_path)) {
    metadata["strata_model"] = st::load_recipe(recipe_path).model.name;
  }
  st::save_safetensors(out, tensors, metadata);
  const st::SafetensorsFile back = st::load_safetensors(out);
  std::map<std::string, at::Tensor> got(back.tensors.begin(), back.tensors.end());
  STRATA_CHECK_T(Error, got.size() == tensors.size(), out, " holds ", got.size(),
                 " tensors, model.pt ", tensors.size());
  for (const auto& [name, t] : tensors) {
    const auto it = got.find(name);
    STRATA_CHECK_T(Error, it != got.end() && it->second.scalar_type() == t.scalar_type() &&
                                      at::equal(it->second, t.cpu()),
                   out, ": ", name, " did not read back equal");
  }
  report["metadata"] = metadata;
}

// The run's model, rebuilt from RUN_DIR/recipe.yaml with its weights, in
// evaluation mode, with the recipe's data.
struct Rebuilt {
  st::Recipe recipe;
  st::LoadedData data;
  std::shared_ptr<st::Model> model;
  at::Tensor example;  // the first evaluation samples (at most 64), to trace on
};

Rebuilt rebuild(const std::string& run_dir, const Tensors& tensors, const std::string& model_pt,
                const std::string& format) {
  const std::string recipe_path = strata::join_path(run_dir, "recipe.yaml");
  STRATA_CHECK_T(UsageError, strata::path_exists(recipe_path), "'", run_dir,
                 "' has no recipe.yaml, which ", format, " needs to rebuild the model; "
                 "export a run directory strata-train wrote");
  Rebuilt r;
  r.recipe = st::load_recipe(recipe_path);
  const st::Registries registries = st::builtin_registries();
  r.data = registries.datasets.get(r.recipe.data.name, r.recipe.where("data.name"), "data.name")
               .load(r.recipe, 0, 1);
  const st::ModelSpec& spec =
      registries.models.get(r.recipe.model.name, r.recipe.where("model.name"), "model.name");
  r.model = spec.build(r.recipe.model, r.data.shape, st::ModelPart{});
  st::assign_state_dict(*r.model, tensors, model_pt,
                        "export with the recipe the run was trained with (RUN_DIR/recipe.yaml)");
  r.model->eval();
  r.example = r.data.eval_inputs.narrow(0, 0, std::min<int64_t>(r.data.eval_inputs.size(0), 64));
  return r;
}

// The options of an int8 export (--quantize and the flags that tune it).
struct Int8Flags {
  st::QuantOptions quant;
  int64_t calibration_batches = 16;
  int threads = 1;  // for the latency figures: an edge device's one core
  bool shrink = true;  // delete the channels structured pruning zeroed
  std::string format = "torchscript";  // or strata-int8 (the manifest's "format")
};

// Median milliseconds of `forward` on `x` over `reps` calls (after warm-up).
double latency_ms(const std::function<at::Tensor(const at::Tensor&)>& forward,
                  const at::Tensor& x, int reps) {
  for (int i = 0; i < 3; ++i) forward(x);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    forward(x);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
  return ms[static_cast<size_t>(reps / 2)];
}

using Forward = std::function<at::Tensor(const at::Tensor&)>;

// Each forward's latency at batch 1 and 64 of `inputs` on `threads`
// threads: {"batch_1": {"<name>_ms": ..., ...}, "batch_64": ...}.
nlohmann::ordered_json latencies(const std::vector<std::pair<std::string, Forward>>& forwards,
                                 const at::Tensor& inputs, int threads) {
  const int threads_before = at::get_num_threads();
  at::set_num_threads(threads);
  nlohmann::ordered_json out;
  for (const int64_t bs : {int64_t{1}, int64_t{64}}) {
    const at::Tensor x = inputs.narrow(0, 0, std::min(bs, inputs.size(0)));
    const int reps = bs == 1 ? 200 : 30;
    nlohmann::ordered_json at_bs;
    for (const auto& [name, forward] : forwards) at_bs[name + "_ms"] = latency_ms(forward, x, reps);
    out["batch_" + std::to_string(bs)] = at_bs;
  }
  at::set_num_threads(threads_before);
  return out;
}

// Calibration batches for static quantization: `n` batches of
// data.batch_size training samples, drawn without replacement by run.seed.
std::vector<at::Tensor> calibration_batches(const Rebuilt& r, int64_t n) {
  const int64_t b = r.recipe.data.batch_size;
  const int64_t available = r.data.train_samples / b;
  STRATA_CHECK_T(UsageError, n >= 1 && n <= available, "--calibration-batches ", n,
                 " is out of range: the training split holds ", available,
                 " batches of data.batch_size ", b, "; pass a number from 1 to ", available);
  STRATA_CHECK_T(UsageError, static_cast<bool>(r.data.train_rows), "data '", r.recipe.data.name,
                 "' cannot hand out training samples for calibration; use --quantize dynamic");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(r.recipe.run.seed));
  const at::Tensor perm = at::randperm(r.data.train_samples, gen, at::kLong);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor idx = perm.narrow(0, i * b, b);
    out.push_back(r.data.train_rows(std::vector<int64_t>(idx.data_ptr<int64_t>(),
                                                         idx.data_ptr<int64_t>() + b))
                      .first);
  }
  return out;
}

// The run's model traced and frozen with BatchNorm folded (the graph every
// edge format starts from, trainer/quantize.h), and quantized to int8 when
// `quantize` is set.
struct Prepared : st::EdgeGraph {
  Rebuilt r;
  torch::jit::Module traced;
};

Prepared prepare(const std::string& run_dir, const Tensors& tensors, const std::string& model_pt,
                 const std::string& format, const std::optional<Int8Flags>& quantize,
                 bool shrink) {
  Prepared p;
  p.r = rebuild(run_dir, tensors, model_pt, format);
  const bool is_static = quantize && quantize->quant.mode == st::QuantMode::kStatic;
  const bool calibrate = is_static && quantize->quant.ranges.empty();
  const std::vector<at::Tensor> calibration =
      calibrate ? calibration_batches(p.r, quantize->calibration_batches) : std::vector<at::Tensor>{};
  torch::NoGradGuard no_grad;
  p.traced = st::trace_torchscript(*p.r.model, p.r.example);
  static_cast<st::EdgeGraph&>(p) = st::edge_graph(
      p.traced, p.r.example, shrink, quantize ? &quantize->quant : nullptr, calibration);
  if (quantize) {
    STRATA_CHECK_T(UsageError, !p.q->layers.empty(), "model '", p.r.recipe.model.name,
                   "' has no layer ",
                   is_static ? "that static quantization covers (conv2d, linear)"
                             : "that dynamic quantization covers (linear)",
                   "; export it without --quantize");
  }
  return p;
}

// The int8 layers as a table and in the report.
void describe_int8(const Prepared& p, const Int8Flags& flags, nlohmann::ordered_json& report) {
  const st::QuantReport& q = *p.q;
  const bool is_static = flags.quant.mode == st::QuantMode::kStatic;
  std::cout << std::left << std::setw(32) << "layer" << std::setw(28) << "int8 op" << std::right
            << std::setw(12) << "fp32 bytes" << std::setw(12) << "int8 bytes" << std::setw(12)
            << "in scale" << std::setw(12) << "out scale" << "\n";
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const st::QuantLayer& l : q.layers) {
    auto scale = [&](double s) { return is_static ? strata::format_metric(s) : std::string("-"); };
    std::cout << std::left << std::setw(32) << l.name << std::setw(28) << l.op << std::right
              << std::setw(12) << l.float_bytes << std::setw(12) << l.weight_bytes << std::setw(12)
              << scale(l.input_scale) << std::setw(12) << scale(l.output_scale) << "\n";
    nlohmann::ordered_json j = st::int8_layer_json(l, is_static);
    j["fp32_bytes"] = l.float_bytes;
    j["int8_bytes"] = l.weight_bytes;
    layers.push_back(j);
  }
  const bool qat = !flags.quant.ranges.empty();
  report["quantize"] = qat ? "qat" : is_static ? "static" : "dynamic";
  report["engine"] = q.engine;
  report["per_channel"] = flags.quant.per_channel;
  if (qat) {
    report["activation_ranges"] = "qat.pt";
  } else if (is_static) {
    report["observer"] = st::observer_name(flags.quant.observer);
    report["calibration_batches"] = flags.calibration_batches;
    report["calibration_samples"] = flags.calibration_batches * p.r.recipe.data.batch_size;
  }
  report["folded_batchnorms"] = p.folded;
  report["float_layers_kept"] = q.float_ops_kept;
  report["layers"] = layers;
}

// The manifest every TorchScript export carries (Note [The strata-int8
// package], trainer/edge_model.h): what a runtime needs to feed the model.
nlohmann::ordered_json edge_manifest(const Prepared& p, const std::string& format,
                                     const Int8Flags* int8) {
  const st::EdgeModelInfo info{p.r.recipe.model.name, p.r.data.task, p.r.data.shape.classes,
                               p.r.example, p.r.data.pixel_mean, p.r.data.pixel_std};
  return st::edge_manifest(format, info, p.shrunk, int8 && p.q ? &*p.q : nullptr,
                           int8 ? &int8->quant : nullptr);
}

// The bytes of `module` saved as TorchScript.
int64_t saved_bytes(const torch::jit::Module& module, const std::string& tmp) {
  module.save(tmp);
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(tmp));
  std::filesystem::remove(tmp);
  return bytes;
}

double accuracy_of(const st::EvalSums& s) {
  return s.count ? static_cast<double>(s.correct) / static_cast<double>(s.count) : 0.0;
}

// A distilled run (recipe.distill.teacher): teacher, student and the
// compressed student (the exported file) side by side -- accuracy on the
// evaluation split, parameters, fp32 TorchScript bytes -- printed and in the
// report ("distillation"). A teacher file no longer there is noted, not an error.
void describe_distillation(const Rebuilt& r, const torch::jit::Module& student_traced,
                           const std::string& compressed, double compressed_accuracy,
                           const std::string& out, nlohmann::ordered_json& report) {
  const st::DistillSection& d = r.recipe.distill;
  if (d.teacher.empty()) return;
  if (!strata::path_exists(d.teacher)) {
    std::cout << "distilled from " << d.teacher << ", which is not there any more: no teacher "
              << "figures\n";
    report["distillation"] = {{"teacher", d.teacher}, {"teacher_missing", true}};
    return;
  }
  torch::NoGradGuard no_grad;
  const st::Registries registries = st::builtin_registries();
  const std::shared_ptr<st::Model> teacher =
      st::load_teacher(r.recipe, registries.models, r.data.shape, at::kCPU);
  const int64_t batch = r.recipe.data.eval_batch_size;
  const double teacher_acc = accuracy_of(
      st::evaluate_classifier(*teacher, r.data.eval_inputs, r.data.eval_targets, batch));
  const double student_acc = accuracy_of(
      st::evaluate_classifier(*r.model, r.data.eval_inputs, r.data.eval_targets, batch));
  const std::string tmp = out + ".tmp";
  const int64_t teacher_bytes = saved_bytes(st::trace_torchscript(*teacher, r.example), tmp);
  const int64_t student_bytes = saved_bytes(student_traced, tmp);
  const auto compressed_bytes = static_cast<int64_t>(std::filesystem::file_size(out));
  const nlohmann::ordered_json rows = nlohmann::ordered_json::array({
      {{"model", "teacher"}, {"spec", d.teacher_model.name}, {"accuracy", teacher_acc},
       {"parameters", st::parameter_count(*teacher)}, {"file_bytes", teacher_bytes}},
      {{"model", "student"}, {"spec", r.recipe.model.name}, {"accuracy", student_acc},
       {"parameters", st::parameter_count(*r.model)}, {"file_bytes", student_bytes}},
      {{"model", "compressed student"}, {"spec", compressed}, {"accuracy", compressed_accuracy},
       {"parameters", st::parameter_count(*r.model)}, {"file_bytes", compressed_bytes}}});
  std::cout << "distilled from " << d.teacher << ":\n"
            << std::left << std::setw(22) << "" << std::setw(24) << "model" << std::right
            << std::setw(10) << r.data.eval_split << std::setw(12) << "parameters"
            << std::setw(12) << "bytes" << "\n";
  for (const auto& row : rows) {
    std::cout << std::left << std::setw(22) << row["model"].get<std::string>() << std::setw(24)
              << row["spec"].get<std::string>() << std::right << std::setw(10)
              << strata::format_metric(row["accuracy"].get<double>()) << std::setw(12)
              << row["parameters"].get<int64_t>() << std::setw(12)
              << row["file_bytes"].get<int64_t>() << "\n";
  }
  report["distillation"] = {{"teacher", d.teacher}, {"models", rows}};
}

// The channels structured pruning zeroed that the export deleted, as a
// table and in the report.
void describe_channels(const Prepared& p, nlohmann::ordered_json& report) {
  if (p.shrunk.empty()) return;
  std::cout << std::left << std::setw(32) << "pruned layer" << std::right << std::setw(10)
            << "channels" << std::setw(8) << "kept" << "\n";
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const st::ShrunkLayer& l : p.shrunk) {
    std::cout << std::left << std::setw(32) << l.layer << std::right << std::setw(10)
              << l.channels << std::setw(8) << l.kept << "\n";
    layers.push_back({{"layer", l.layer}, {"channels", l.channels}, {"kept", l.kept}});
  }
  report["pruned_channels"] = layers;
}

// The model as TorchScript, loadable by torch::jit::load and torch.jit.load:
// the trace of the recipe's model with the run's weights; for a run whose
// structured pruning zeroed channels, the frozen graph with them deleted
// (a smaller dense model, BatchNorm folded). Loaded back, its outputs and
// accuracy on the recipe's evaluation split are compared with the model's.
void export_torchscript(const std::string& run_dir, const Tensors& tensors,
                        const std::string& model_pt, const std::string& out, bool shrink,
                        int threads, nlohmann::ordered_json& report) {
  Prepared p = prepare(run_dir, tensors, model_pt, "--format torchscript", std::nullopt, shrink);
  const Rebuilt& r = p.r;
  const st::Recipe& recipe = r.recipe;
  const st::LoadedData& data = r.data;
  const std::shared_ptr<st::Model>& model = r.model;
  const at::Tensor& example = r.example;
  const bool pruned = !p.shrunk.empty();
  torch::jit::Module module = pruned ? st::to_module(p.g, "PrunedModel") : p.traced;
  const std::string tmp = out + ".tmp";
  st::save_edge_model(module, edge_manifest(p, "torchscript", nullptr), out);

  torch::jit::Module back = torch::jit::load(out);
  back.eval();
  torch::NoGradGuard no_grad;
  const double diff = (back.forward({example}).toTensor() - model->forward(example))
                          .abs().max().item<double>();
  STRATA_CHECK_T(Error, diff <= 1e-5, out, ": the loaded TorchScript's outputs differ from the "
                 "model's by ", diff, " (more than 1e-5)");
  const int64_t batch = recipe.data.eval_batch_size;
  const st::EvalSums ours = st::evaluate_classifier(*model, data.eval_inputs, data.eval_targets, batch);
  const st::EvalSums theirs = st::evaluate_classifier(
      [&](const at::Tensor& x) { return back.forward({x}).toTensor(); }, data.eval_inputs,
      data.eval_targets, batch);
  const auto accuracy = accuracy_of;
  report["model"] = recipe.model.name;
  report["example_shape"] = example.sizes().vec();
  report["max_abs_diff"] = diff;
  report["eval_split"] = data.eval_split;
  report["eval_samples"] = data.eval_inputs.size(0);
  report["accuracy_model"] = accuracy(ours);
  report["accuracy_torchscript"] = accuracy(theirs);
  std::cout << "traced " << recipe.model.name << " on " << example.sizes()
            << "; reloaded outputs within " << strata::format_metric(diff) << " of the model's; "
            << data.eval_split << " accuracy " << strata::format_metric(accuracy(theirs))
            << " (model " << strata::format_metric(accuracy(ours)) << ")\n";
  // The smaller model sums in another order (and folded its BatchNorm), so
  // a prediction on a tie could flip; the unpruned trace runs the model's ops.
  STRATA_CHECK_T(Error, pruned || ours.correct == theirs.correct, out,
                 ": the loaded TorchScript scores ", theirs.correct, " correct, the model ",
                 ours.correct);
  if (!pruned) return;

  describe_channels(p, report);
  const int64_t dense_bytes = saved_bytes(p.traced, tmp);
  const auto pruned_bytes = static_cast<int64_t>(std::filesystem::file_size(out));
  const nlohmann::ordered_json latency = latencies(
      {{"unpruned", [&](const at::Tensor& v) { return p.traced.forward({v}).toTensor(); }},
       {"pruned", [&](const at::Tensor& v) { return back.forward({v}).toTensor(); }}},
      data.eval_inputs, threads);
  int64_t channels = 0, kept = 0;
  for (const st::ShrunkLayer& l : p.shrunk) {
    channels += l.channels;
    kept += l.kept;
  }
  report["file_bytes_unpruned"] = dense_bytes;
  report["latency_threads"] = threads;
  report["latency"] = latency;
  const auto& l1 = latency["batch_1"];
  const auto& l64 = latency["batch_64"];
  std::cout << "structured pruning: " << channels - kept << " of " << channels
            << " channels deleted in " << p.shrunk.size() << " layers; " << pruned_bytes
            << " bytes (unpruned " << dense_bytes << ", "
            << strata::format_metric(static_cast<double>(dense_bytes) / static_cast<double>(pruned_bytes))
            << "x smaller); latency batch 1 " << strata::format_metric(l1["pruned_ms"].get<double>())
            << " ms (unpruned " << strata::format_metric(l1["unpruned_ms"].get<double>())
            << "), batch 64 " << strata::format_metric(l64["pruned_ms"].get<double>())
            << " ms (unpruned " << strata::format_metric(l64["unpruned_ms"].get<double>()) << "), "
            << threads << " thread" << (threads == 1 ? "" : "s") << "\n";
  describe_distillation(r, p.traced, "channels pruned", accuracy(theirs), out, report);
}

// Quantizes the run's model to int8 (dynamic or static, trainer/quantize.h),
// saves it as TorchScript, loads it back and reports accuracy, agreement
// with the float model, sizes and latency.
void export_int8_torchscript(const std::string& run_dir, const Tensors& tensors,
                             const std::string& model_pt, const std::string& out,
                             const Int8Flags& flags, nlohmann::ordered_json& report) {
  Prepared p = prepare(run_dir, tensors, model_pt, "--quantize", flags, flags.shrink);
  const Rebuilt& r = p.r;
  st::FrozenGraph& g = p.g;
  torch::jit::Module& traced = p.traced;
  const st::QuantReport& q = *p.q;
  const bool is_static = flags.quant.mode == st::QuantMode::kStatic;
  const int folded = p.folded;
  torch::NoGradGuard no_grad;
  const std::string tmp = out + ".tmp";
  st::save_edge_model(st::to_module(g, "Int8Model"), edge_manifest(p, flags.format, &flags), out);
  torch::jit::Module back = torch::jit::load(out);
  const at::Tensor mine = g.run(r.example);
  STRATA_CHECK_T(Error, at::equal(back.forward({r.example}).toTensor(), mine), out,
                 ": the loaded int8 TorchScript computes other outputs than the graph it was "
                 "saved from");
  const int64_t fp32_bytes = saved_bytes(traced, tmp);
  const auto int8_bytes = static_cast<int64_t>(std::filesystem::file_size(out));

  // Accuracy of both, and how often they agree, over the evaluation split.
  const at::Tensor& inputs = r.data.eval_inputs;
  const at::Tensor& targets = r.data.eval_targets;
  const int64_t batch = r.recipe.data.eval_batch_size;
  int64_t count = 0, correct_fp32 = 0, correct_int8 = 0, agree = 0;
  for (int64_t i = 0; i < inputs.size(0); i += batch) {
    const int64_t n = std::min(batch, inputs.size(0) - i);
    const at::Tensor x = inputs.narrow(0, i, n), y = targets.narrow(0, i, n).flatten();
    const at::Tensor a = r.model->forward(x).argmax(-1).flatten();
    const at::Tensor b = back.forward({x}).toTensor().argmax(-1).flatten();
    count += y.numel();
    correct_fp32 += a.eq(y).sum().item<int64_t>();
    correct_int8 += b.eq(y).sum().item<int64_t>();
    agree += a.eq(b).sum().item<int64_t>();
  }
  auto ratio = [](int64_t a, int64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; };

  const nlohmann::ordered_json latency = latencies(
      {{"fp32", [&](const at::Tensor& v) { return traced.forward({v}).toTensor(); }},
       {"int8", [&](const at::Tensor& v) { return back.forward({v}).toTensor(); }}},
      inputs, flags.threads);

  report["model"] = r.recipe.model.name;
  describe_channels(p, report);
  describe_int8(p, flags, report);
  report["eval_split"] = r.data.eval_split;
  report["eval_predictions"] = count;
  report["accuracy_fp32"] = ratio(correct_fp32, count);
  report["accuracy_int8"] = ratio(correct_int8, count);
  report["argmax_agreement"] = ratio(agree, count);
  report["file_bytes_fp32_torchscript"] = fp32_bytes;
  report["compression"] = ratio(fp32_bytes, int8_bytes);
  report["latency_threads"] = flags.threads;
  report["latency"] = latency;
  const auto& l1 = latency["batch_1"];
  std::cout << (!flags.quant.ranges.empty() ? "qat" : is_static ? "static" : "dynamic")
            << " int8 " << r.recipe.model.name << " ("
            << q.engine << ", " << q.layers.size() << " int8 ops, " << folded
            << " batch norms folded): " << r.data.eval_split << " accuracy "
            << strata::format_metric(ratio(correct_int8, count)) << " (fp32 "
            << strata::format_metric(ratio(correct_fp32, count)) << "), argmax agreement "
            << strata::format_metric(ratio(agree, count)) << "; " << int8_bytes << " bytes ("
            << strata::format_metric(ratio(fp32_bytes, int8_bytes)) << "x smaller than fp32 "
            << fp32_bytes << "); batch-1 latency " << strata::format_metric(l1["int8_ms"].get<double>())
            << " ms (fp32 " << strata::format_metric(l1["fp32_ms"].get<double>()) << " ms, "
            << flags.threads << " thread" << (flags.threads == 1 ? "" : "s") << ")\n";
  describe_distillation(r, traced,
                        std::string(!flags.quant.ranges.empty() ? "qat" : is_static ? "static" : "dynamic") +
                            " int8" + (p.shrunk.empty() ? "" : ", channels pruned"),
                        ratio(correct_int8, count), out, report);
}

// Writes the run's model as ONNX (trainer/onnx.h): float, or QDQ int8 with
// --quantize static; checked by the ONNX checker.
void export_onnx(const std::string& run_dir, const Tensors& tensors, const std::string& model_pt,
                 const std::string& out, const std::optional<Int8Flags>& quantize, bool shrink,
                 nlohmann::ordered_json& report) {
#if STRATA_HAVE_ONNX
  STRATA_CHECK_T(UsageError, !quantize || quantize->quant.mode == st::QuantMode::kStatic,
                 "--format onnx --quantize dynamic: dynamic int8 has no QDQ form; use "
                 "--quantize static, or dynamic with --format torchscript");
  Prepared p = prepare(run_dir, tensors, model_pt, "--format onnx", quantize, shrink);
  report["model"] = p.r.recipe.model.name;
  describe_channels(p, report);
  if (quantize) describe_int8(p, *quantize, report);
  const st::OnnxReport o =
      st::save_onnx(p.g, p.r.example, out, std::string("strata ") + STRATA_VERSION);
  report["opset"] = o.opset;
  report["onnx_nodes"] = o.nodes;
  report["onnx_ops"] = o.ops;
  report["initializer_bytes"] = o.initializer_bytes;
  report["example_shape"] = p.r.example.sizes().vec();
  report["dynamic_dims"] = {"batch"};
  report["onnx_checker"] = "passed";
  report["folded_batchnorms"] = p.folded;
  std::string ops;
  for (const auto& [op, n] : o.ops) ops += (ops.empty() ? "" : ", ") + op + " " + std::to_string(n);
  std::cout << "ONNX opset " << o.opset << ", " << o.nodes << " nodes (" << ops << "), "
            << o.initializer_bytes << " bytes of initializers; the ONNX checker passed\n";
#else
  (void)run_dir, (void)tensors, (void)model_pt, (void)out, (void)quantize, (void)shrink,
      (void)report;
  throw strata::UsageError("this strata-export was built without ONNX: install libonnx-dev "
                   "(launch/setup does) and rebuild");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  return st::run_main("strata-export", [&] {
    auto app = st::make_app("strata-export",
                            "Writes a trained model (RUN_DIR/model.pt) in a format other runtimes "
                            "load, verifies it by reading it back, and reports its tensors.");
    std::string run_dir, format = "safetensors", out;
    app->add_option("RUN_DIR", run_dir, "a run directory holding model.pt (runs/<name>)")
        ->required();
    app->add_option("--format", format,
                    "safetensors (the Hugging Face weights format), torchscript (the model, "
                    "for torch::jit::load and torch.jit.load), onnx (for onnxruntime) or "
                    "strata-int8 (the int8 model with its manifest, for strata-edge infer; "
                    "--quantize static unless given)")
        ->check(CLI::IsMember({"safetensors", "torchscript", "onnx", "strata-int8"}));
    std::string quantize = "none", observer = "minmax";
    bool per_tensor = false;
    Int8Flags int8;
    app->add_option("--quantize", quantize,
                    "int8 post-training quantization of a torchscript export: dynamic (linear "
                    "layers, activations quantized on the fly) or static (conv and linear, "
                    "activation ranges calibrated on training batches) or qat (static with the "
                    "ranges quantization-aware training learned: a run with train.qat)")
        ->check(CLI::IsMember({"none", "dynamic", "static", "qat"}));
    app->add_option("--observer", observer,
                    "static: how calibration picks activation ranges: minmax, moving_average or "
                    "percentile")
        ->check(CLI::IsMember({"minmax", "moving_average", "percentile"}));
    app->add_option("--calibration-batches", int8.calibration_batches,
                    "static: training batches (of data.batch_size) to calibrate on")
        ->capture_default_str();
    app->add_option("--engine", int8.quant.engine,
                    "int8 kernels: auto (oneDNN on x86 where LibTorch has it, else QNNPACK), "
                    "qnnpack, onednn, fbgemm or x86; the runtime that loads the file sets the same")
        ->check(CLI::IsMember({"auto", "qnnpack", "onednn", "fbgemm", "x86"}))
        ->capture_default_str();
    app->add_flag("--per-tensor", per_tensor,
                  "one int8 scale per weight tensor instead of one per output channel");
    bool keep_channels = false;
    app->add_flag("--keep-channels", keep_channels,
                  "torchscript and onnx: keep the channels structured pruning "
                  "(train.prune.structure=channels) zeroed instead of deleting them from the "
                  "exported model");
    app->add_option("--threads", int8.threads, "threads for the latency figures")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app->add_option("--out", out,
                    "output file (default: RUN_DIR/model.safetensors, RUN_DIR/model.torchscript.pt)")
        ->type_name("FILE");
    if (!st::parse_args(*app, argc, argv)) return 0;
    if (format == "strata-int8") {
      STRATA_CHECK_T(UsageError, quantize != "none" || !app->get_option("--quantize")->count(),
                     "--format strata-int8 is an int8 model: pass --quantize static, qat or "
                     "dynamic (or leave --quantize out: static)");
      if (quantize == "none") quantize = "static";
      int8.format = format;
    }
    const bool quantized = quantize != "none";
    STRATA_CHECK_T(UsageError, !quantized || format != "safetensors", "--quantize ", quantize,
                   " writes TorchScript or ONNX; pass --format torchscript or onnx (safetensors "
                   "holds the float weights)");
    int8.quant.mode = quantize == "dynamic" ? st::QuantMode::kDynamic : st::QuantMode::kStatic;
    int8.quant.per_channel = !per_tensor;
    int8.quant.observer = st::parse_observer(observer, "--observer: ");
    int8.shrink = !keep_channels;

    STRATA_CHECK_T(UsageError, strata::path_exists(run_dir),
                   "'", run_dir, "' does not exist; pass a run directory (runs/<name>)");
    const std::string model_pt = strata::join_path(run_dir, "model.pt");
    STRATA_CHECK_T(UsageError, strata::path_exists(model_pt), "'", run_dir,
                   "' has no model.pt: it is not a finished run (strata-train writes model.pt "
                   "at the end; a checkpoint joins into one with strata-train --consolidate)");
    if (quantize == "qat") {
      const std::string qat_pt = strata::join_path(run_dir, "qat.pt");
      STRATA_CHECK_T(UsageError, strata::path_exists(qat_pt), "'", run_dir,
                     "' has no qat.pt: it was not trained with train.qat.enabled (or is a "
                     "federated model, whose clients' ranges stay on the clients); train with "
                     "train.qat, or use --quantize static to calibrate");
      int8.quant.ranges = st::load_qat_ranges(qat_pt);
      STRATA_CHECK_T(UsageError, !int8.quant.ranges.empty(), qat_pt, " holds no ranges: the run "
                     "ended before train.qat.start_step; train past it, or use --quantize static");
    }
    if (out.empty()) {
      out = strata::join_path(
          run_dir, format == "safetensors" ? "model.safetensors"
                   : format == "onnx"      ? (quantized ? "model.int8.onnx" : "model.onnx")
                   : format == "strata-int8" ? "model.strata-int8"
                   : quantized             ? "model.int8.torchscript.pt"
                                           : "model.torchscript.pt");
    }
    const Tensors tensors = st::load_state_dict(model_pt);
    nlohmann::ordered_json report;
    report["format"] = format;
    report["source"] = model_pt;
    report["file"] = out;
    if (format == "safetensors") {
      export_safetensors(run_dir, tensors, out, report);
    } else if (format == "onnx") {
      export_onnx(run_dir, tensors, model_pt, out,
                  quantized ? std::optional<Int8Flags>(int8) : std::nullopt, int8.shrink, report);
    } else if (quantized) {
      export_int8_torchscript(run_dir, tensors, model_pt, out, int8, report);
    } else {
      export_torchscript(run_dir, tensors, model_pt, out, int8.shrink, int8.threads, report);
    }
    report["file_bytes"] = std::filesystem::file_size(out);
    report["tensors"] = nlohmann::ordered_json::array();
    int64_t total = 0;
    std::cout << std::left << std::setw(40) << "tensor" << std::setw(8) << "dtype" << std::setw(20)
              << "shape" << std::right << std::setw(12) << "bytes" << std::setw(10) << "sparsity"
              << "\n";
    for (const auto& [name, t] : tensors) {
      const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
      total += bytes;
      std::string shape = "[";
      for (int64_t d = 0; d < t.dim(); ++d) shape += (d ? ", " : "") + std::to_string(t.size(d));
      shape += "]";
      const std::string dtype = c10::toString(t.scalar_type());
      // The fraction of exact zeros: what pruning (train.prune) left.
      const double sparsity =
          t.numel() ? static_cast<double>(t.eq(0).sum().item<int64_t>()) / static_cast<double>(t.numel())
                    : 0.0;
      std::cout << std::left << std::setw(40) << name << std::setw(8) << dtype << std::setw(20)
                << shape << std::right << std::setw(12) << bytes << std::setw(10)
                << strata::format_metric(sparsity) << "\n";
      report["tensors"].push_back({{"name", name}, {"dtype", dtype}, {"shape", t.sizes().vec()},
                                   {"bytes", bytes}, {"sparsity", sparsity}});
    }
    report["tensor_bytes"] = total;
    report["verified"] = true;
    strata::atomic_write_file(strata::join_path(run_dir, "export.json"), report.dump(2) + "\n");
    std::cout << "wrote " << out << ": " << tensors.size() << " tensors, "
              << std::filesystem::file_size(out) << " bytes, verified; report "
              << strata::join_path(run_dir, "export.json") << "\n";
    return 0;
  });
}
