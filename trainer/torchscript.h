// TorchScript: a Strata model as a file that C++ (torch::jit::load) and
// Python (torch.jit.load) run without Strata.
//
// Note [Tracing the model seam]: a Model's forward is C++ code, not a
// graph, so export records it: the JIT tracer runs forward once on an
// example batch and keeps every ATen op it calls. The module it is recorded
// into holds the model's own parameters and buffers under the model's names
// (features.0.weight, ...: the names of model.pt), as nested submodules, so
// the tracer reads them as module attributes rather than baking them in as
// constants; torch.jit.load(...).state_dict() equals model.pt. Tracing sees
// one path through forward: control flow that depends on the data is
// recorded as taken for the example (Strata's built-in models have none;
// a language model is traced at its seq_len). The traced graph is also the
// input of the other exports of issue #17.
#pragma once

#include <torch/script.h>

#include "trainer/models/models.h"

namespace strata::train {

// `model` traced on `example` in eval mode without autograd (Note [Tracing
// the model seam]) as a TorchScript module with one method, forward(x).
// ConfigError with the tracer's message when the forward cannot be traced.
torch::jit::Module trace_torchscript(Model& model, const at::Tensor& example);

}  // namespace strata::train
