#include "trainer/torchscript.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include "core/error.h"

namespace strata::train {

namespace {

// A TorchScript module holding `m`'s own parameters, buffers and children
// (recursively) under their names; classes named by their path so that
// two children with the same name ("0") are different types.
torch::jit::Module mirror(torch::nn::Module& m, const std::string& path,
                          const std::shared_ptr<torch::jit::CompilationUnit>& cu) {
  torch::jit::Module jm(c10::QualifiedName("__torch__.strata." + path), cu, true);
  for (auto& p : m.named_parameters(false)) jm.register_parameter(p.key(), p.value(), false);
  for (auto& b : m.named_buffers(false)) jm.register_buffer(b.key(), b.value());
  for (auto& c : m.named_children()) {
    jm.register_module(c.key(), mirror(*c.value(), path + "_" + c.key(), cu));
  }
  return jm;
}

}  // namespace

torch::jit::Module trace_torchscript(Model& model, const at::Tensor& example) {
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module module = mirror(model, "Model", cu);
  std::shared_ptr<torch::jit::Graph> graph;
  try {
    auto traced = torch::jit::tracer::trace(
        {example},
        [&](torch::jit::Stack in) { return torch::jit::Stack{model.forward(in[0].toTensor())}; },
        [](const at::Tensor&) { return std::string(); }, /*strict=*/true,
        /*force_outplace=*/false, &module, {"x"});
    graph = traced.first->graph;
  } catch (const c10::Error& e) {
    torch::jit::tracer::abandon();
    if (was_training) model.train();
    throw ConfigError(str("the model's forward cannot be traced into TorchScript: ",
                          e.what_without_backtrace()));
  }
  if (was_training) model.train();
  auto fn = cu->create_function(c10::QualifiedName(*module.type()->name(), "forward"), graph);
  module.type()->addMethod(fn);
  return module;
}

}  // namespace strata::train
