#include "trainer/prequential.h"

#include <utility>

#include "core/error.h"

namespace strata::train {

Prequential::Prequential(at::Device device)
    : device_(device),
      window_errors_(at::zeros({}, at::TensorOptions(at::kDouble).device(device))) {}

void Prequential::score(const at::Tensor& output, const at::Tensor& targets) {
  const at::Tensor wrong = output.detach().argmax(-1) != targets.to(output.device());
  window_errors_ += wrong.sum();
  window_instances_ += targets.numel();
}

std::pair<double, double> Prequential::window_sum(dist::Communicator* dp) const {
  at::Tensor t = at::stack({window_errors_.to(at::kDouble),
                            at::scalar_tensor(static_cast<double>(window_instances_),
                                              at::TensorOptions(at::kDouble).device(device_))});
  if (dp != nullptr && dp->size() > 1) {
    t = t.to(dist::transport_device(*dp, device_));
    dp->all_reduce(t, dist::ReduceOp::kSum)->wait();
  }
  t = t.cpu();
  return {t[0].item<double>(), t[1].item<double>()};
}

std::pair<double, int64_t> Prequential::close(dist::Communicator* dp) {
  const auto [errors, n] = window_sum(dp);
  window_errors_.zero_();
  window_instances_ = 0;
  errors_ += errors;
  instances_ += static_cast<int64_t>(n);
  return {errors, static_cast<int64_t>(n)};
}

JsonObject Prequential::close_window(int64_t step, dist::Communicator* dp,
                                     const at::Tensor& mixture) {
  const auto [errors, n] = close(dp);
  JsonObject r;
  r.add("kind", "online")
      .add("step", step)
      .add("instances", instances_)
      .add("error", error())
      .add("window_instances", n)
      .add("window_error", n > 0 ? errors / static_cast<double>(n) : 0.0);
  if (mixture.defined()) {
    const at::Tensor a = mixture.detach().to(at::kCPU, at::kDouble).contiguous();
    r.add("alpha", std::vector<double>(a.data_ptr<double>(), a.data_ptr<double>() + a.numel()));
  }
  return r;
}

std::vector<double> Prequential::state(dist::Communicator* dp) const {
  const auto [errors, n] = window_sum(dp);
  return {errors_, static_cast<double>(instances_), errors, n};
}

void Prequential::restore(const std::vector<double>& s, bool first_rank) {
  STRATA_CHECK_T(Error, s.size() == 4, "a checkpoint's prequential counts hold ", s.size(),
                 " numbers, not 4");
  errors_ = s[0];
  instances_ = static_cast<int64_t>(s[1]);
  window_errors_.fill_(first_rank ? s[2] : 0.0);
  window_instances_ = first_rank ? static_cast<int64_t>(s[3]) : 0;
}

}  // namespace strata::train
