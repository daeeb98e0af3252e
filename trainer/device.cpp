#include "trainer/device.h"

#include <ATen/Context.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cctype>

#include "core/error.h"

namespace strata::train {

int cuda_device_count() {
  if (!at::hasCUDA()) return 0;
  return static_cast<int>(
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount());
}

c10::Device resolve_device(const std::string& spec, int local_rank,
                           const std::string& where) {
  if (spec == "cpu") return c10::Device(c10::kCPU);
  const int count = cuda_device_count();
  if (spec == "auto" && count == 0) return c10::Device(c10::kCPU);

  int index = local_rank < 0 ? 0 : local_rank % std::max(1, count);
  if (spec != "auto" && spec != "cuda") {
    const std::string digits = spec.rfind("cuda:", 0) == 0 ? spec.substr(5) : "";
    bool numeric = !digits.empty() && digits.size() < 4;
    for (char ch : digits) numeric = numeric && std::isdigit(static_cast<unsigned char>(ch));
    STRATA_CHECK_T(ConfigError, numeric, where, "run.device = '", spec,
                   "' is not a device; use auto, cpu, cuda or cuda:N");
    index = std::stoi(digits);
  }
  STRATA_CHECK_T(ConfigError, count > 0, where, "run.device = '", spec, "' but ",
                 at::hasCUDA() ? "no GPU is visible to this process (check "
                                 "CUDA_VISIBLE_DEVICES and the driver)"
                               : "this build's LibTorch has no CUDA",
                 "; use run.device: cpu (or auto)");
  STRATA_CHECK_T(ConfigError, index < count, where, "run.device = '", spec,
                 "' but this process sees ", count, " GPU(s) (cuda:0..cuda:",
                 count - 1, ")");
  c10::Device device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
  return device;
}

}  // namespace strata::train
