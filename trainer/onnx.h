// ONNX (issue #17): a frozen graph (trainer/quantize.h) as an ONNX model
// that onnxruntime and other ONNX runtimes load, written with the ONNX
// protobuf schema (Debian's libonnx-dev) and checked by the ONNX checker.
//
// Note [Writing ONNX from the frozen graph]: the graph is run once on the
// example batch first, so every value's dtype and rank (and, for values
// that do not depend on the input -- a causal mask, position ids -- the
// value itself, written as an initializer) is known; each ATen op then
// maps to ONNX ops (opset 17: LayerNormalization is in it). Float graphs
// map op by op. A statically quantized graph becomes QDQ: a quantized
// value is a uint8 tensor; an int8 kernel is DequantizeLinear of its input
// and of its int8 weights (per channel, axis 0), the float op, and
// QuantizeLinear with its output scale -- the form onnxruntime fuses into
// QLinearConv / QLinearMatMul. The input's first dimension is the symbolic
// "batch"; every other dimension is the example's (a language model at
// its seq_len). An op with no mapping is a ConfigError that names it.
#pragma once

#include <map>
#include <string>

#include "trainer/quantize.h"

namespace strata::train {

struct OnnxReport {
  int64_t opset = 0;
  int64_t nodes = 0;
  std::map<std::string, int64_t> ops;  // ONNX op type -> count
  int64_t initializer_bytes = 0;
};

// Writes `g` as ONNX to `path` (atomically) and checks it with the ONNX
// checker. ConfigError for an op without an ONNX form (named, with where
// it is used), Error when the checker refuses the model.
OnnxReport save_onnx(const FrozenGraph& g, const at::Tensor& example, const std::string& path,
                     const std::string& producer);

}  // namespace strata::train
