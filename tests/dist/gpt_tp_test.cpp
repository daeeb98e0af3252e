// GPT under tensor parallelism (thread ranks over gloo) against the same
// GPT at tp = 1 from the same seed: the initial weights are the slices of
// the dense ones, and K SGD steps give the same losses and parameters
// within 1e-5 (fp32, no dropout).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>

#include "core/error.h"
#include "distributed/tensor_parallel.h"
#include "thread_ranks.h"
#include "trainer/models/gpt.h"

namespace strata::train {
namespace {

constexpr int kSteps = 3;

ModelSection tiny_gpt() {
  ModelSection c;
  c.name = "gpt";
  c.n_layer = 2;
  c.n_head = 4;
  c.d_model = 32;
  c.seq_len = 16;
  c.dropout = 0.0;
  return c;
}

// The slice of dense parameter `name` that tp rank r of t holds.
at::Tensor expected_shard(const std::string& name, const at::Tensor& full, int r, int t) {
  if (name.find("c_attn") != std::string::npos) {  // q, k, v blocks, each split
    std::vector<at::Tensor> parts;
    for (const auto& block : full.chunk(3, 0)) parts.push_back(block.chunk(t, 0)[r]);
    return at::cat(parts, 0);
  }
  if (name.find("c_fc") != std::string::npos || name == "wte.weight") return full.chunk(t, 0)[r];
  if (name.find("c_proj.weight") != std::string::npos) return full.chunk(t, 1)[r];
  return full;  // replicated: LayerNorms, wpe, row-parallel biases
}

struct TrainRun {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> params;
};

TrainRun train(Model& model, const at::Tensor& ids, const at::Tensor& targets) {
  TrainRun run;
  torch::optim::SGD opt(model.parameters(), torch::optim::SGDOptions(0.1));
  for (int step = 0; step < kSteps; ++step) {
    opt.zero_grad();
    at::Tensor logits = model.forward(ids);
    at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                             targets.reshape({-1}));
    loss.backward();
    opt.step();
    run.losses.push_back(loss.item<double>());
  }
  for (const auto& p : model.named_parameters()) run.params[p.key()] = p.value().detach().clone();
  return run;
}

TEST(GptTensorParallel, MatchesTpOneForKStepsAtTp2And4) {
  const ModelSection cfg = tiny_gpt();
  const InputShape shape{1, 1, 1, 256};
  torch::manual_seed(21);
  const at::Tensor ids = at::randint(0, 256, {2, 16}, at::kLong);
  const at::Tensor targets = at::randint(0, 256, {2, 16}, at::kLong);
  torch::manual_seed(5);
  auto dense = make_gpt(cfg, shape);
  std::map<std::string, at::Tensor> initial;
  for (const auto& p : dense->named_parameters()) initial[p.key()] = p.value().detach().clone();
  const TrainRun ref = train(*dense, ids, targets);
  for (int tp : {2, 4}) {
    std::mutex build;  // the generator is shared by the rank threads
    test::run_ranks_shared(tp, [&](std::shared_ptr<dist::Communicator> g) {
      ModelPart part;
      part.tp = g;
      std::shared_ptr<Model> model;
      {
        std::lock_guard<std::mutex> lock(build);
        torch::manual_seed(5);
        model = make_gpt(cfg, shape, part);
      }
      const int r = g->rank();
      for (const auto& p : model->named_parameters()) {
        EXPECT_TRUE(at::equal(p.value(), expected_shard(p.key(), initial.at(p.key()), r, tp)))
            << "tp " << tp << " initial " << p.key();
      }
      const TrainRun run = train(*model, ids, targets);
      for (int k = 0; k < kSteps; ++k) {
        EXPECT_NEAR(run.losses[k], ref.losses[k], 1e-5) << "tp " << tp << " step " << k;
      }
      for (const auto& [name, value] : run.params) {
        const at::Tensor want = expected_shard(name, ref.params.at(name), r, tp);
        EXPECT_TRUE(at::allclose(value, want, 1e-5, 1e-5))
            << "tp " << tp << " " << name << " max diff " << (value - want).abs().max().item<double>();
      }
    });
  }
}

TEST(GptTensorParallel, ASizeThatDoesNotDivideTheHeadsSaysSo) {
  test::run_ranks_shared(3, [&](std::shared_ptr<dist::Communicator> g) {
    ModelPart part;
    part.tp = g;
    try {
      make_gpt(tiny_gpt(), InputShape{1, 1, 1, 256}, part);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("distributed.tensor_parallel = 3 must divide "
                                           "model.n_head (4)"),
                std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace strata::train
