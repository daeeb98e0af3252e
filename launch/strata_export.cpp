// strata-export: a trained model as a file another runtime loads.
//
//   strata-export RUN_DIR [--format safetensors|torchscript] [--out FILE]
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
//                compared with the model's.
// It prints a table of the tensors and writes the report RUN_DIR/export.json.
// Issue #17 adds ONNX and int8 formats.
//
// Exit codes: 0 written and verified, 2 usage error (no such run, no
// model.pt or recipe.yaml, weights that do not fit the recipe's model), 1
// runtime failure.
#include <iomanip>
#include <iostream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "strata/config.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/recipe.h"
#include "trainer/evaluate.h"
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

// Rebuilds the recipe's model with the run's weights, traces it into
// TorchScript, saves it, loads it back and compares outputs and accuracy.
void export_torchscript(const std::string& run_dir, const Tensors& tensors,
                        const std::string& model_pt, const std::string& out,
                        nlohmann::ordered_json& report) {
  const std::string recipe_path = strata::join_path(run_dir, "recipe.yaml");
  STRATA_CHECK_T(UsageError, strata::path_exists(recipe_path), "'", run_dir,
                 "' has no recipe.yaml, which --format torchscript needs to rebuild the model; "
                 "export a run directory strata-train wrote");
  const st::Recipe recipe = st::load_recipe(recipe_path);
  const st::Registries registries = st::builtin_registries();
  const st::LoadedData data =
      registries.datasets.get(recipe.data.name, recipe.where("data.name"), "data.name")
          .load(recipe, 0, 1);
  const st::ModelSpec& spec =
      registries.models.get(recipe.model.name, recipe.where("model.name"), "model.name");
  std::shared_ptr<st::Model> model = spec.build(recipe.model, data.shape, st::ModelPart{});
  st::assign_state_dict(*model, tensors, model_pt,
                        "export with the recipe the run was trained with (RUN_DIR/recipe.yaml)");
  model->eval();
  const at::Tensor example =
      data.eval_inputs.narrow(0, 0, std::min<int64_t>(data.eval_inputs.size(0), 64));
  torch::jit::Module traced = st::trace_torchscript(*model, example);
  const std::string tmp = out + ".tmp";
  traced.save(tmp);
  std::filesystem::rename(tmp, out);

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
  auto accuracy = [](const st::EvalSums& s) {
    return s.count ? static_cast<double>(s.correct) / static_cast<double>(s.count) : 0.0;
  };
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
  STRATA_CHECK_T(Error, ours.correct == theirs.correct, out, ": the loaded TorchScript scores ",
                 theirs.correct, " correct, the model ", ours.correct);
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
                    "safetensors (the Hugging Face weights format) or torchscript (the model, "
                    "for torch::jit::load and torch.jit.load)")
        ->check(CLI::IsMember({"safetensors", "torchscript"}));
    app->add_option("--out", out,
                    "output file (default: RUN_DIR/model.safetensors, RUN_DIR/model.torchscript.pt)")
        ->type_name("FILE");
    if (!st::parse_args(*app, argc, argv)) return 0;

    STRATA_CHECK_T(UsageError, strata::path_exists(run_dir),
                   "'", run_dir, "' does not exist; pass a run directory (runs/<name>)");
    const std::string model_pt = strata::join_path(run_dir, "model.pt");
    STRATA_CHECK_T(UsageError, strata::path_exists(model_pt), "'", run_dir,
                   "' has no model.pt: it is not a finished run (strata-train writes model.pt "
                   "at the end; a checkpoint joins into one with strata-train --consolidate)");
    if (out.empty()) {
      out = strata::join_path(run_dir, format == "safetensors" ? "model.safetensors"
                                                              : "model.torchscript.pt");
    }
    const Tensors tensors = st::load_state_dict(model_pt);
    nlohmann::ordered_json report;
    report["format"] = format;
    report["source"] = model_pt;
    report["file"] = out;
    if (format == "safetensors") {
      export_safetensors(run_dir, tensors, out, report);
    } else {
      export_torchscript(run_dir, tensors, model_pt, out, report);
    }
    report["file_bytes"] = std::filesystem::file_size(out);
    report["tensors"] = nlohmann::ordered_json::array();
    int64_t total = 0;
    std::cout << std::left << std::setw(40) << "tensor" << std::setw(8) << "dtype" << std::setw(20)
              << "shape" << std::right << std::setw(12) << "bytes" << "\n";
    for (const auto& [name, t] : tensors) {
      const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
      total += bytes;
      std::string shape = "[";
      for (int64_t d = 0; d < t.dim(); ++d) shape += (d ? ", " : "") + std::to_string(t.size(d));
      shape += "]";
      const std::string dtype = c10::toString(t.scalar_type());
      std::cout << std::left << std::setw(40) << name << std::setw(8) << dtype << std::setw(20)
                << shape << std::right << std::setw(12) << bytes << "\n";
      report["tensors"].push_back({{"name", name}, {"dtype", dtype}, {"shape", t.sizes().vec()},
                                   {"bytes", bytes}});
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
