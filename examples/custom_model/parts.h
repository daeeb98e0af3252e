// What this project adds to Strata, registered from outside Strata's tree:
//   model      "wide_mlp": flatten -> [Linear -> ReLU] per model.hidden width -> Linear,
//              whose layers form a layer list, so it can run as pipeline stages
//   dataset    "fmnist14": Fashion-MNIST average-pooled to 14 x 14, with its
//              own deterministic shuffled stream
//   optimizer  "signum": sign of the momentum (Bernstein et al. 2018), with
//              its own per-parameter state and the codec that checkpoints it
#pragma once

#include "trainer/trainer.h"

namespace custom {

void register_parts(strata::train::Registries& registries);

}  // namespace custom
