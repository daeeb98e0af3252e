// strata-export: a trained model as a file another runtime loads.
//
//   strata-export RUN_DIR [--format safetensors] [--out FILE]
//
// Reads RUN_DIR/model.pt (what strata-train and strata-fedsim leave) and
// writes it in the chosen format -- so far safetensors (the Hugging Face
// weights format, trainer/safetensors.h), by default to
// RUN_DIR/model.safetensors -- reads the file back and checks every tensor
// bit for bit, prints a table of the tensors and writes the report
// RUN_DIR/export.json. Issue #17 adds TorchScript, ONNX and int8 formats.
//
// Exit codes: 0 written and verified, 2 usage error (no such run, no
// model.pt), 1 runtime failure.
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
#include "trainer/safetensors.h"

namespace st = strata::train;

int main(int argc, char** argv) {
  return st::run_main("strata-export", [&] {
    auto app = st::make_app("strata-export",
                            "Writes a trained model (RUN_DIR/model.pt) in a format other runtimes "
                            "load, verifies it by reading it back, and reports its tensors.");
    std::string run_dir, format = "safetensors", out;
    app->add_option("RUN_DIR", run_dir, "a run directory holding model.pt (runs/<name>)")
        ->required();
    app->add_option("--format", format, "safetensors (the Hugging Face weights format)")
        ->check(CLI::IsMember({"safetensors"}));
    app->add_option("--out", out, "output file (default: RUN_DIR/model.safetensors)")
        ->type_name("FILE");
    if (!st::parse_args(*app, argc, argv)) return 0;

    STRATA_CHECK_T(UsageError, strata::path_exists(run_dir),
                   "'", run_dir, "' does not exist; pass a run directory (runs/<name>)");
    const std::string model_pt = strata::join_path(run_dir, "model.pt");
    STRATA_CHECK_T(UsageError, strata::path_exists(model_pt), "'", run_dir,
                   "' has no model.pt: it is not a finished run (strata-train writes model.pt "
                   "at the end; a checkpoint joins into one with strata-train --consolidate)");
    if (out.empty()) out = strata::join_path(run_dir, "model.safetensors");
    const auto tensors = st::load_state_dict(model_pt);
    std::map<std::string, std::string> metadata{{"format", "pt"},
                                                {"producer", std::string("strata ") + STRATA_VERSION}};
    const std::string recipe_path = strata::join_path(run_dir, "recipe.yaml");
    if (strata::path_exists(recipe_path)) {
      metadata["strata_model"] = st::load_recipe(recipe_path).model.name;
    }
    st::save_safetensors(out, tensors, metadata);

    // Read back: every tensor bit for bit.
    const st::SafetensorsFile back = st::load_safetensors(out);
    std::map<std::string, at::Tensor> got(back.tensors.begin(), back.tensors.end());
    STRATA_CHECK_T(Error, got.size() == tensors.size(), out, " holds ", got.size(),
                   " tensors, model.pt ", tensors.size());
    nlohmann::ordered_json report;
    report["format"] = format;
    report["source"] = model_pt;
    report["file"] = out;
    report["file_bytes"] = std::filesystem::file_size(out);
    report["metadata"] = metadata;
    report["tensors"] = nlohmann::ordered_json::array();
    int64_t total = 0;
    std::cout << std::left << std::setw(40) << "tensor" << std::setw(8) << "dtype" << std::setw(20)
              << "shape" << std::right << std::setw(12) << "bytes" << "\n";
    for (const auto& [name, t] : tensors) {
      const auto it = got.find(name);
      STRATA_CHECK_T(Error, it != got.end() && it->second.scalar_type() == t.scalar_type() &&
                                        at::equal(it->second, t.cpu()),
                     out, ": ", name, " did not read back equal");
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
              << std::filesystem::file_size(out) << " bytes, read back equal; report "
              << strata::join_path(run_dir, "export.json") << "\n";
    return 0;
  });
}
