// int8 models for the edge (issue #17): a traced model's graph, frozen,
// with BatchNorm folded, quantized after training.
//
// Note [The frozen graph]: every edge format starts from the TorchScript
// trace of the model seam (Note [Tracing the model seam]). freeze() turns
// the trace's parameter reads (prim::GetAttr chains from `self`) into
// constants and remembers each constant's parameter name, so the passes
// below rewrite a flat graph of ATen ops over constant weights and still
// report layers by the names of model.pt. The passes are graph rewrites,
// not module surgery, so they apply to any model whose forward traces, and
// a layer they cannot handle stays in float (or, for a format that needs
// it, is named in the error).
//
// Note [Post-training quantization]: two kinds, as torch.ao has them.
//   dynamic  aten::linear with constant weights becomes
//            quantized::linear_dynamic: int8 weights (per output channel or
//            per tensor), activations quantized on the fly per batch, float
//            in and out. Nothing to calibrate.
//   static   conv2d and linear (each fused with a ReLU that alone reads it)
//            become quantized::conv2d(_relu) / quantized::linear(_relu), and
//            a residual add (+ ReLU) quantized::add(_relu), over uint8
//            activations whose scale and zero point an observer chose on
//            calibration batches. Ops that work on quantized tensors as
//            they are (max pooling, flatten, ReLU, eval dropout, mean)
//            pass them through; every other reader gets a dequantize.
// Weights are symmetric int8 (zero point 0, scale max|w| / 127.5, as
// torch.ao's symmetric observers), activations affine uint8 over the
// observed range widened to hold 0 (7-bit on FBGEMM and x86, whose
// kernels would saturate on 8, as torch.ao's reduce_range). The int8
// kernels are LibTorch's; the engine is chosen in one place
// (select_qengine) and reported: oneDNN on x86 where the build has it
// (Debian's 1.13 has oneDNN and QNNPACK, no FBGEMM), QNNPACK on ARM, the
// edge CPU it was written for. A saved int8 module repacks its weights for
// the engine current when it is loaded, so the runtime sets the engine too.
#pragma once

#include <torch/script.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace strata::train {

// A model's forward as a flat graph over constant weights (Note [The frozen
// graph]). Input 0 is the (unused) module, input 1 the batch.
struct FrozenGraph {
  std::shared_ptr<torch::jit::Graph> graph;
  // Weight constants by parameter name ("features.0.weight"); folded weights
  // keep the name of the weight they replace.
  std::unordered_map<const torch::jit::Value*, std::string> names;

  at::Tensor run(const at::Tensor& x) const;
  // Runs the graph on each of `batches` and hands `seen` the tensors the
  // `values` (tensor values of the graph) took, in order: calibration's
  // observers and the ONNX writer's record of every value.
  void observe(const std::vector<torch::jit::Value*>& values,
               const std::vector<at::Tensor>& batches,
               const std::function<void(const std::vector<at::Tensor>& seen)>& seen) const;
  // The parameter name of constant `v`, or "" when it has none.
  std::string name_of(const torch::jit::Value* v) const;
  // Deletes the ops no output depends on, and the names of the constants
  // that go with them (a freed Value's address may be reused).
  void drop_dead();
};

// `v` when it is a constant, or a list built of constant ints (the trace
// builds conv strides and paddings with prim::ListConstruct); nullopt when
// it depends on the input.
std::optional<c10::IValue> constant_of(torch::jit::Value* v);

// An attribute a traced graph reads from its module (the end of a
// prim::GetAttr chain from `self` that is not a submodule), with its
// dotted name ("features.0.weight").
struct ModuleRead {
  torch::jit::Node* node;  // the GetAttr
  c10::IValue value;
  std::string name;
};
// Every such read of `g` (a method graph of `module`), in graph order.
std::vector<ModuleRead> module_reads(torch::jit::Graph& g, const torch::jit::Module& module);

// The traced forms of linear back to linear: addmm(b, x, t(W), 1, 1) and
// matmul(x, t(W)) over a W that `is_weight` accepts become linear(x, W, b),
// which computes exactly that, so that later passes match one form.
void matmul_to_linear(torch::jit::Graph& g,
                      const std::function<bool(torch::jit::Value*)>& is_weight);

// `traced` (trace_torchscript's module) with its parameters and buffers
// read as named constants.
FrozenGraph freeze(const torch::jit::Module& traced);

// Folds every aten::batch_norm (evaluation statistics) that alone reads a
// conv2d's or linear's output into that layer's weight and bias, and drops
// evaluation-mode dropout. Returns how many batch norms were folded.
int fold_batchnorm(FrozenGraph& g);

// The graph as a module that torch::jit::save writes and torch::jit::load
// (C++) and torch.jit.load (Python) run.
torch::jit::Module to_module(const FrozenGraph& g, const std::string& class_name);

enum class QuantMode { kDynamic, kStatic };
enum class ObserverKind { kMinMax, kMovingAverage, kPercentile };

struct QuantOptions {
  QuantMode mode = QuantMode::kStatic;
  std::string engine = "auto";  // or qnnpack, onednn, fbgemm, x86
  bool per_channel = true;  // weight scales per output channel, or one per tensor
  ObserverKind observer = ObserverKind::kMinMax;
  double averaging_constant = 0.01;  // moving average: min += c * (batch min - min)
  double percentile = 99.99;         // percentile: the range [p', p] of each batch, averaged
  // Static: the activation ranges by point (Note [QAT ranges]), as
  // quantization-aware training learned them, instead of calibration.
  std::map<std::string, std::pair<double, double>> ranges;
};

// Note [QAT ranges]: the activations static quantization needs a range for
// are named by the int8 op that reads or writes them: "<k>:<layer>:<role>",
// k the op's index among the conv2d, linear and residual add ops quantize()
// replaces (graph order), layer its weight's parameter name ("add" for an
// add), role "in", "in2" (an add's second input) or "out" (after the ReLU
// it absorbs). The QAT graph (trainer/qat.h) and quantize() enumerate the
// same ops of the same forward, so the names agree; a value that two
// points name takes the first, and the names of the layers make a
// different model's ranges fail to match rather than apply.
std::string activation_point(size_t op_index, const std::string& layer, const char* role);

// Whether int8 execution passes a quantized tensor through `n` with its
// scale and zero point (max pooling, flatten, ReLU, eval dropout, ...).
bool int8_passes_through(const torch::jit::Node* n);

// Parses "minmax", "moving_average", "percentile"; ConfigError naming `where` otherwise.
ObserverKind parse_observer(const std::string& name, const std::string& where);
std::string observer_name(ObserverKind k);

// The int8 engine `name` ("auto": oneDNN on x86 where the build has it,
// else QNNPACK, else what the build has), made current; its name
// ("onednn"). ConfigError for an engine the build lacks, naming those it has.
std::string select_qengine(const std::string& name = "auto");
// The engines this LibTorch has ("qnnpack", "onednn", ...).
std::vector<std::string> supported_qengines();

// One quantized op, for the export report.
struct QuantLayer {
  std::string name;         // its weight's parameter name, or "add" for a residual add
  std::string op;           // "quantized::conv2d_relu", ...
  std::vector<int64_t> weight_shape;
  int64_t weight_bytes = 0;  // int8 weights + float scales
  int64_t float_bytes = 0;   // the float weights it replaces
  double weight_scale_min = 0, weight_scale_max = 0;  // over the weight's channels (0 for an add)
  double input_scale = 0, output_scale = 0;  // static: activation scales (0 for dynamic)
  int64_t input_zero_point = 0, output_zero_point = 0;
};

struct QuantReport {
  std::string engine;
  std::vector<QuantLayer> layers;
  int64_t float_ops_kept = 0;  // conv/linear left in float (non-constant weights)
};

// Quantizes `g` in place (Note [Post-training quantization]); static needs
// `calibration` batches (at least one), dynamic ignores them.
QuantReport quantize(FrozenGraph& g, const QuantOptions& opts,
                     const std::vector<at::Tensor>& calibration);

// Per-tensor affine uint8 parameters for the range [lo, hi] (widened to hold
// 0), as torch.ao computes them: scale = (hi - lo) / qmax, zero point =
// -round(lo / scale) clamped to [0, qmax]; qmax 255, or 127 with
// `reduce_range`.
std::pair<double, int64_t> affine_qparams(double lo, double hi, bool reduce_range = false);
// Symmetric int8 weights: per output channel (dim 0) or per tensor.
at::Tensor quantize_weight(const at::Tensor& w, bool per_channel);

}  // namespace strata::train
