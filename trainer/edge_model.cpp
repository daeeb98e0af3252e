#include "trainer/edge_model.h"

#include <caffe2/serialize/inline_container.h>

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "strata/config.h"
#include "trainer/data/dataset.h"
#include "trainer/quantize.h"

namespace strata::train {

void save_edge_model(const torch::jit::Module& module, const nlohmann::ordered_json& manifest,
                     const std::string& path) {
  const std::string tmp = path + ".tmp";
  module.save(tmp, {{kEdgeManifest, manifest.dump(2)}});
  std::filesystem::rename(tmp, path);
}

nlohmann::ordered_json int8_layer_json(const QuantLayer& l, bool is_static) {
  nlohmann::ordered_json j{{"name", l.name}, {"op", l.op}, {"weight_shape", l.weight_shape}};
  if (l.weight_scale_max > 0) {
    j["weight_scale_min"] = l.weight_scale_min;
    j["weight_scale_max"] = l.weight_scale_max;
  }
  if (is_static) {
    j["input_scale"] = l.input_scale;
    j["input_zero_point"] = l.input_zero_point;
    j["output_scale"] = l.output_scale;
    j["output_zero_point"] = l.output_zero_point;
  }
  return j;
}

nlohmann::ordered_json edge_manifest(const std::string& format, const EdgeModelInfo& info,
                                     const std::vector<ShrunkLayer>& shrunk,
                                     const QuantReport* q, const QuantOptions* opts) {
  nlohmann::ordered_json input;
  input["shape"] = std::vector<int64_t>(info.example.sizes().begin() + 1, info.example.sizes().end());
  input["dtype"] = c10::toString(info.example.scalar_type());
  if (info.pixel_std > 0) {
    input["pixel_mean"] = info.pixel_mean;
    input["pixel_std"] = info.pixel_std;
  }
  nlohmann::ordered_json m{
      {"format", format},
      {"version", kEdgeManifestVersion},
      {"producer", std::string("strata ") + STRATA_VERSION},
      {"model", {{"name", info.model_name},
                 {"task", info.task == Task::kClassification ? "classification" : "language_model"}}},
      {"classes", info.classes},
      {"input", input}};
  if (!shrunk.empty()) {
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (const ShrunkLayer& l : shrunk) {
      layers.push_back({{"layer", l.layer}, {"channels", l.channels}, {"kept", l.kept}});
    }
    m["pruned_channels"] = layers;
  }
  if (q && opts) {
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    const bool is_static = opts->mode == QuantMode::kStatic;
    for (const QuantLayer& l : q->layers) layers.push_back(int8_layer_json(l, is_static));
    m["int8"] = {{"engine", q->engine},
                 {"scheme", !opts->ranges.empty() ? "qat" : is_static ? "static" : "dynamic"},
                 {"per_channel", opts->per_channel},
                 {"layers", layers}};
  }
  return m;
}

EdgeGraph edge_graph(const torch::jit::Module& traced, const at::Tensor& example, bool shrink,
                     const QuantOptions* opts, const std::vector<at::Tensor>& calibration) {
  torch::NoGradGuard no_grad;
  EdgeGraph e;
  e.g = train::freeze(traced);
  if (shrink) e.shrunk = shrink_channels(e.g, example);
  e.folded = fold_batchnorm(e.g);
  if (opts) e.q = quantize(e.g, *opts, calibration);
  return e;
}

std::string int8_package(const torch::jit::Module& traced, const EdgeModelInfo& info,
                         const QuantOptions& opts, const std::vector<at::Tensor>& calibration) {
  const EdgeGraph e = edge_graph(traced, info.example, /*shrink=*/true, &opts, calibration);
  std::ostringstream out;
  to_module(e.g, "Int8Model")
      .save(out, {{kEdgeManifest,
                   edge_manifest("strata-int8", info, e.shrunk, &*e.q, &opts).dump(2)}});
  return out.str();
}

namespace {

std::string shape_text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

EdgeModel::EdgeModel(const std::string& path) : path_(path) {
  STRATA_CHECK_T(UsageError, path_exists(path), "'", path, "' does not exist; pass a model "
                 "strata-export wrote (--format strata-int8 or torchscript)");
  // The manifest first (the archive's record, without loading the module):
  // it names the int8 engine the weights are packed for.
  std::string text;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string record = std::string("extra/") + kEdgeManifest;
    if (reader.hasRecord(record)) {
      const auto [data, size] = reader.getRecord(record);
      text.assign(static_cast<const char*>(data.get()), size);
    }
  } catch (const c10::Error& e) {
    throw UsageError(str("'", path, "' is not a TorchScript archive strata-export wrote: ",
                         e.what_without_backtrace()));
  }
  STRATA_CHECK_T(UsageError, !text.empty(), "'", path, "' has no ", kEdgeManifest,
                 ": it is a TorchScript archive, but not one strata-export wrote; export the "
                 "run with strata-export --format strata-int8 (or torchscript)");
  try {
    manifest_ = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(str("'", path, "': its ", kEdgeManifest, " is not JSON: ", e.what()));
  }
  const int version = manifest_.value("version", 0);
  STRATA_CHECK_T(UsageError, version >= 1 && version <= kEdgeManifestVersion, "'", path,
                 "' is a Strata model of manifest version ", version, "; this Strata reads "
                 "versions 1 to ", kEdgeManifestVersion, " (update Strata)");
  try {
    input_shape_ = manifest_.at("input").at("shape").get<std::vector<int64_t>>();
    pixel_mean_ = manifest_.at("input").value("pixel_mean", 0.0);
    pixel_std_ = manifest_.at("input").value("pixel_std", 0.0);
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(str("'", path, "': its manifest has no valid input shape: ", e.what()));
  }
  if (manifest_.contains("int8")) {
    select_qengine(manifest_["int8"].value("engine", std::string("auto")));
  }
  try {
    module_ = torch::jit::load(path, at::kCPU);
  } catch (const c10::Error& e) {
    throw UsageError(str("'", path, "' cannot be loaded: ", e.what_without_backtrace()));
  }
  module_.eval();
}

at::Tensor EdgeModel::forward(const at::Tensor& batch) {
  std::vector<int64_t> want{batch.dim() > 0 ? batch.size(0) : 0};
  want.insert(want.end(), input_shape_.begin(), input_shape_.end());
  STRATA_CHECK_T(UsageError, batch.dim() >= 1 && batch.sizes() == c10::IntArrayRef(want), path_,
                 " takes inputs of shape [batch, ", shape_text(input_shape_).substr(1),
                 " but was given ", shape_text(batch.sizes()));
  torch::NoGradGuard no_grad;
  return module_.forward({batch}).toTensor();
}

at::Tensor EdgeModel::from_pixels(const at::Tensor& pixels) const {
  STRATA_CHECK_T(UsageError, takes_pixels(), path_, " is not an image model (its manifest has "
                 "no pixel normalisation)");
  at::Tensor p = pixels;
  if (p.dim() == 3 && input_shape_.size() == 3 && input_shape_[0] == 1) p = p.unsqueeze(1);
  // The training loader's float arithmetic, bit for bit (pixel_affine).
  const auto [scale, shift] =
      pixel_affine(static_cast<float>(pixel_mean_), static_cast<float>(pixel_std_));
  return p.to(at::kFloat).mul(scale).add(shift);
}

std::vector<std::vector<Prediction>> EdgeModel::classify(const at::Tensor& batch, int64_t top) {
  const at::Tensor logits = forward(batch);
  STRATA_CHECK_T(UsageError, logits.dim() == 2, path_, " is not a classifier (outputs ",
                 shape_text(logits.sizes()), ")");
  // A stable sort, so that of equal logits (common for an int8 model, whose
  // outputs are multiples of one scale) the lower class comes first, as
  // argmax (and the accuracy strata-export reports) has it.
  const at::Tensor p = logits.to(at::kFloat).softmax(1);
  const auto [sorted, order] = logits.sort(/*stable=*/true, 1, /*descending=*/true);
  const at::Tensor indices = order.narrow(1, 0, std::min<int64_t>(top, p.size(1)));
  const at::Tensor values = p.gather(1, indices);
  std::vector<std::vector<Prediction>> out(static_cast<size_t>(p.size(0)));
  for (int64_t i = 0; i < p.size(0); ++i) {
    for (int64_t k = 0; k < values.size(1); ++k) {
      out[static_cast<size_t>(i)].push_back(
          {indices[i][k].item<int64_t>(), values[i][k].item<double>()});
    }
  }
  return out;
}

}  // namespace strata::train
