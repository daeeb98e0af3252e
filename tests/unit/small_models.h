// The built-in models at test size (two small conv stages, two layers of
// width 16), for tests that run every model.
#pragma once

#include <memory>
#include <string>

#include "trainer/trainer.h"

namespace strata::train::testing {

// `name` ("mlp", "cnn", "resnet_small", "gpt") built for 28x28 images (gpt:
// 256 tokens, sequence length 12).
inline std::shared_ptr<Model> small_model(const std::string& name) {
  const Registries r = builtin_registries();
  ModelSection c;
  c.name = name;
  c.channels = {8, 16};
  c.blocks = 1;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_model = 16;
  c.seq_len = 12;
  const InputShape shape = name == "gpt" ? InputShape{1, 1, 1, 256} : InputShape{};
  return r.models.get(name, "", "model.name").build(c, shape, ModelPart{});
}

}  // namespace strata::train::testing
