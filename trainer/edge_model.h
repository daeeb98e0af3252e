// Inference on the edge (issue #17): a model strata-export wrote, run
// without MPI, a recipe or the training data.
//
// Note [The strata-int8 package]: strata-export --format strata-int8 writes
// the int8 model as a TorchScript archive (a zip that C++ torch::jit::load
// and Python torch.jit.load read) holding
//   - the int8 graph: conv2d/linear weights int8 with their per-channel (or
//     per-tensor) scales and zero points in LibTorch's packed parameters,
//     each activation's scale and zero point on its quantize op, BatchNorm
//     folded, channels that structured pruning zeroed deleted;
//   - extra/strata.json, the manifest that makes it self-describing:
//     {"format": "strata-int8", "version": 1, "producer",
//      "model": the recipe's model name and task, "classes",
//      "input": {"shape": [C, H, W] (tokens: [T]), "dtype",
//                "pixel_mean", "pixel_std": raw 8-bit pixels p become inputs
//                (p / 255 - mean) / std},
//      "int8": {"engine", "scheme", "per_channel", "layers": [{"name", "op",
//               "weight_shape", "weight_scale_min/max", "input_scale",
//               "input_zero_point", "output_scale", "output_zero_point"}]},
//      "pruned_channels"}.
// Every TorchScript export of strata-export carries the same manifest
// ("format": "torchscript", no "int8" for fp32). EdgeModel reads it first:
// it makes the manifest's int8 engine current before loading (LibTorch
// repacks the int8 weights for the engine current at load), checks each
// batch against the input shape, and turns raw pixels into inputs.
#pragma once

#include <torch/script.h>

#include <nlohmann/json.hpp>

#include "trainer/channels.h"
#include "trainer/models/models.h"
#include "trainer/quantize.h"

#include <optional>
#include <string>
#include <vector>

namespace strata::train {

// The archive entry of the manifest ("extra/strata.json" in the zip).
inline constexpr const char* kEdgeManifest = "strata.json";
inline constexpr int kEdgeManifestVersion = 1;

// What the manifest says of the model and its input.
struct EdgeModelInfo {
  std::string model_name;   // the recipe's model.name
  Task task = Task::kClassification;
  int64_t classes = 0;
  at::Tensor example;       // a batch of inputs: the shape and dtype of one sample
  double pixel_mean = 0.0, pixel_std = 0.0;  // images: (p / 255 - mean) / std; std 0: none
};

// The manifest of a model exported as `format` ("torchscript",
// "strata-int8"), with the channels structured pruning deleted and, for an
// int8 model, its quantization (`q` and the options it was made with).
nlohmann::ordered_json edge_manifest(const std::string& format, const EdgeModelInfo& info,
                                     const std::vector<ShrunkLayer>& shrunk,
                                     const QuantReport* q, const QuantOptions* opts);
// One int8 op of a report: weight scales and (static) activation scales and zero points.
nlohmann::ordered_json int8_layer_json(const QuantLayer& l, bool is_static);

// The graph every edge export writes (Note [The frozen graph]): `traced`
// frozen, the channels structured pruning zeroed deleted (with `shrink`),
// BatchNorm folded and, with `opts`, quantized to int8 (static: calibrated
// on `calibration`, or with opts->ranges).
struct EdgeGraph {
  FrozenGraph g;
  std::vector<ShrunkLayer> shrunk;
  int folded = 0;  // batch norms
  std::optional<QuantReport> q;
};
EdgeGraph edge_graph(const torch::jit::Module& traced, const at::Tensor& example, bool shrink,
                     const QuantOptions* opts, const std::vector<at::Tensor>& calibration);

// A model traced (trace_torchscript) as a strata-int8 package in memory:
// frozen, channels structured pruning zeroed deleted, BatchNorm folded,
// quantized with `opts` (static: calibrated on `calibration`). What the
// federated server publishes for clients that only infer.
std::string int8_package(const torch::jit::Module& traced, const EdgeModelInfo& info,
                         const QuantOptions& opts, const std::vector<at::Tensor>& calibration);

// Saves `module` with `manifest` (Note [The strata-int8 package]) to `path`
// (atomically: a temporary file renamed).
void save_edge_model(const torch::jit::Module& module, const nlohmann::ordered_json& manifest,
                     const std::string& path);

struct Prediction {
  int64_t label = 0;
  double probability = 0.0;
};

class EdgeModel {
 public:
  // UsageError naming `path` for a file that is not a strata-export model
  // (no manifest), a manifest of a newer version, or an int8 engine this
  // LibTorch lacks.
  explicit EdgeModel(const std::string& path);

  const nlohmann::json& manifest() const { return manifest_; }
  // The input of one sample ([C, H, W], or [T] tokens).
  const std::vector<int64_t>& input_shape() const { return input_shape_; }
  // Images: whether raw pixels can be fed (the manifest has the normalisation).
  bool takes_pixels() const { return pixel_std_ > 0.0; }

  // The outputs (logits) for a batch [B, ...input_shape()]; UsageError for
  // another shape.
  at::Tensor forward(const at::Tensor& batch);
  // Raw 8-bit pixels, [B, C, H, W] uint8 (or [B, H, W] for one channel),
  // normalised as in training.
  at::Tensor from_pixels(const at::Tensor& pixels) const;
  // The `top` most probable classes of each sample (softmax of the logits).
  std::vector<std::vector<Prediction>> classify(const at::Tensor& batch, int64_t top = 1);

 private:
  std::string path_;
  nlohmann::json manifest_;
  std::vector<int64_t> input_shape_;
  double pixel_mean_ = 0.0, pixel_std_ = 0.0;
  torch::jit::Module module_;
};

}  // namespace strata::train
