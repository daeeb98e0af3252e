#include "trainer/activation_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>

#include <mutex>

#include "core/error.h"
#include "trainer/amp.h"

namespace strata::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Generator generator_for(const at::Device& device) {
  return device.is_cuda() ? at::globalContext().defaultGenerator(device)
                          : at::detail::getDefaultCPUGenerator();
}

at::Tensor rng_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// What the recomputation needs, carried through the autograd context.
struct Recompute : torch::CustomClassHolder {
  BlockFn fn;
  std::vector<at::Tensor> buffers;
  at::Device device{at::kCPU};
  at::Tensor cpu_rng, device_rng;  // device_rng: the input's GPU generator
  AutocastState amp;
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  // `anchor`: an empty tensor that requires grad, so the output joins the
  // graph even when the input does not (the first block of a network);
  // otherwise the block's parameters would get no gradient.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& anchor, c10::intrusive_ptr<Recompute> r) {
    ctx->save_for_backward({input});
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(r);
    return r->fn(input);  // autograd is off inside forward
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto r = c10::static_intrusive_pointer_cast<Recompute>(
        ctx->saved_data["recompute"].toCapsule());
    at::Tensor x = ctx->get_saved_variables()[0].detach();
    x.requires_grad_(ctx->needs_input_grad(0));

    // Fork the generators: replay the forward's draws, then put back the
    // state the rest of training expects.
    at::Generator cpu = at::detail::getDefaultCPUGenerator();
    const at::Tensor cpu_now = rng_state(cpu);
    at::Tensor device_now;
    set_rng_state(cpu, r->cpu_rng);
    if (r->device.is_cuda()) {
      device_now = rng_state(generator_for(r->device));
      set_rng_state(generator_for(r->device), r->device_rng);
    }
    std::vector<at::Tensor> buffers_now;
    {
      at::NoGradGuard no_grad;
      for (const auto& b : r->buffers) buffers_now.push_back(b.clone());
    }
    at::Tensor y;
    {
      at::AutoGradMode grad_on(true);
      AutocastGuard amp(r->device.type(), r->amp.dtype, r->amp.enabled);
      y = r->fn(x);
    }
    set_rng_state(cpu, cpu_now);
    if (r->device.is_cuda()) set_rng_state(generator_for(r->device), device_now);

    // Reentrant backward through the recomputed block: accumulates its
    // parameters' gradients (their hooks fire here, once) and x's.
    if (y.requires_grad()) torch::autograd::backward({y}, {grads[0]});
    {
      // After the backward: it may read the buffers at their recomputed
      // version (BatchNorm saves the running statistics).
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < r->buffers.size(); ++i) r->buffers[i].copy_(buffers_now[i]);
    }
    return {x.requires_grad() ? x.grad() : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpoint(BlockFn fn, const at::Tensor& input, std::vector<at::Tensor> buffers) {
  if (!at::GradMode::is_enabled()) return fn(input);
  auto r = c10::make_intrusive<Recompute>();
  r->fn = std::move(fn);
  r->buffers = std::move(buffers);
  r->device = input.device();
  r->cpu_rng = rng_state(at::detail::getDefaultCPUGenerator());
  if (r->device.is_cuda()) r->device_rng = rng_state(generator_for(r->device));
  r->amp = autocast_state(r->device.type());
  static thread_local const at::Tensor anchor = at::empty({0}).requires_grad_();
  return CheckpointFunction::apply(input, anchor, r);
}

std::vector<bool> checkpoint_plan(const std::string& policy, int64_t every, int64_t units,
                                  const std::string& where) {
  STRATA_CHECK_T(ConfigError, policy == "none" || policy == "full" || policy == "every_k",
                 where, "train.activation_checkpointing = '", policy,
                 "'; use none, full or every_k");
  STRATA_CHECK_T(ConfigError, policy == "none" || units > 0, where,
                 "train.activation_checkpointing = ", policy, " but this model has no "
                 "checkpointable units (a transformer's blocks, a CNN's stages); "
                 "use none");
  STRATA_CHECK_T(ConfigError, every >= 1, where, "train.checkpoint_every must be >= 1");
  std::vector<bool> plan(static_cast<size_t>(units), policy == "full");
  if (policy == "every_k") {
    for (int64_t i = 0; i < units; i += every) plan[static_cast<size_t>(i)] = true;
  }
  return plan;
}

}  // namespace strata::train
