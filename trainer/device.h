// Where a run computes: run.device resolved against this process and host.
//
// "auto" is the local GPU when LibTorch has CUDA and one is visible, else the
// CPU; "cuda" is this rank's GPU (local rank modulo the visible count, the
// usual one-rank-per-GPU layout); "cuda:N" is that GPU. The chosen GPU also
// becomes the process's current CUDA device, which NCCL and the CUDA caching
// allocator key on.
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace strata::train {

// Throws ConfigError starting with `where` (the recipe position as
// Recipe::where gives it: "file:line: " or empty) for a malformed
// spec or a GPU this build or host does not have.
c10::Device resolve_device(const std::string& spec, int local_rank,
                           const std::string& where);

// Number of CUDA devices this process sees (0 in CPU builds).
int cuda_device_count();

}  // namespace strata::train
