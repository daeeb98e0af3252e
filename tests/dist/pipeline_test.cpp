// Pipeline parallelism (thread ranks over gloo): a GPT split into 2 and 4
// stages, run by the executor with gpipe and 1f1b over 1, 4 and 8
// microbatches, gives the unsplit model's loss and gradients; 1F1B holds
// at most pp - stage microbatches' activations (instrumented), gpipe all.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>

#include "core/error.h"
#include "distributed/pipeline_schedule.h"
#include "thread_ranks.h"
#include "trainer/models/gpt.h"
#include "distributed/pipeline_executor.h"

namespace strata::train {
namespace {

ModelSection tiny_gpt() {
  ModelSection c;
  c.name = "gpt";
  c.n_layer = 2;  // 4 layers: embedding, 2 blocks, head
  c.n_head = 2;
  c.d_model = 16;
  c.seq_len = 8;
  c.dropout = 0.0;
  return c;
}

struct Reference {
  double loss = 0.0;
  std::map<std::string, at::Tensor> grads;
};

Reference unsplit(const at::Tensor& ids, const at::Tensor& targets) {
  torch::manual_seed(3);
  auto model = make_gpt(tiny_gpt(), InputShape{1, 1, 1, 64});
  at::Tensor logits = model->forward(ids);
  at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, 64}), targets.reshape({-1}));
  loss.backward();
  Reference r{loss.item<double>(), {}};
  for (const auto& p : model->named_parameters()) r.grads[p.key()] = p.value().grad().clone();
  return r;
}

// Stage s of pp: its model (layers from the balanced partition) and
// executor; runs one step and checks loss and gradients.
void run_stage(std::shared_ptr<dist::Communicator> pp, const std::string& schedule, int m,
               const at::Tensor& ids, const at::Tensor& targets, const Reference& ref,
               std::mutex& build, int* peak) {
  const ModelSection cfg = tiny_gpt();
  const auto counts = dist::partition_layers(gpt_layer_parameters(cfg, 64), pp->size());
  const InputShape shape{1, 1, 1, 64};
  ModelPart part;
  for (int i = 0; i < pp->rank(); ++i) part.layer_begin += counts[i];
  part.layer_end = part.layer_begin + counts[pp->rank()];
  std::shared_ptr<Model> model;
  {
    std::lock_guard<std::mutex> lock(build);  // the generator is shared
    torch::manual_seed(3);
    model = make_gpt(cfg, shape, part);
  }
  dist::PipelineExecutor pipe(pp, schedule, m);
  const int64_t mb = ids.size(0) / m;
  dist::StageFunctions fns;
  fns.forward = [&](const at::Tensor& x, int) { return model->forward(x); };
  fns.loss = [&](const at::Tensor& y, int i) {
    return at::cross_entropy_loss(y.reshape({-1, 64}),
                                  targets.slice(0, i * mb, (i + 1) * mb).reshape({-1}));
  };
  const at::Tensor loss = pipe.train_step(ids, fns);
  dist::sum_tied_gradients(*model, kGptTiedParameter, *pp);
  const std::string where = schedule + " pp " + std::to_string(pp->size()) + " m " +
                            std::to_string(m) + " stage " + std::to_string(pp->rank());
  EXPECT_EQ(loss.defined(), pipe.last()) << where;
  if (loss.defined()) EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5) << where;
  for (const auto& p : model->named_parameters()) {
    const at::Tensor& want = ref.grads.at(p.key());
    ASSERT_TRUE(p.value().grad().defined()) << where << " " << p.key();
    EXPECT_TRUE(at::allclose(p.value().grad(), want, 1e-5, 1e-6))
        << where << " " << p.key() << " max diff "
        << (p.value().grad() - want).abs().max().item<double>();
  }
  *peak = pipe.peak_activations();
}

TEST(Pipeline, MatchesTheUnsplitModelForEveryScheduleStagesAndMicrobatches) {
  torch::manual_seed(11);
  const at::Tensor ids = at::randint(0, 64, {8, 8}, at::kLong);
  const at::Tensor targets = at::randint(0, 64, {8, 8}, at::kLong);
  const Reference ref = unsplit(ids, targets);
  for (const std::string schedule : {"gpipe", "1f1b"}) {
    for (int pp : {2, 4}) {
      for (int m : {1, 4, 8}) {
        std::mutex build;
        std::vector<int> peaks(pp, 0);
        test::run_ranks_shared(pp, [&](std::shared_ptr<dist::Communicator> g) {
          run_stage(g, schedule, m, ids, targets, ref, build, &peaks[g->rank()]);
        });
        // Instrumented: what the stage actually held at once.
        for (int s = 0; s < pp; ++s) {
          const int want = schedule == "gpipe" ? m : std::min(pp - s, m);
          EXPECT_EQ(peaks[s], want) << schedule << " pp " << pp << " m " << m << " stage " << s;
          EXPECT_LE(peaks[s], schedule == "gpipe" ? m : pp);
        }
      }
    }
  }
}

TEST(Pipeline, ABatchThatTheMicrobatchesDoNotDivideSaysSo) {
  test::run_ranks_shared(1, [&](std::shared_ptr<dist::Communicator> g) {
    dist::PipelineExecutor pipe(g, "1f1b", 3);
    dist::StageFunctions fns;
    fns.forward = [](const at::Tensor& x, int) { return x; };
    fns.loss = [](const at::Tensor& y, int) { return y.sum(); };
    try {
      pipe.train_step(at::zeros({8, 2}), fns);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("cannot be split into 3 equal microbatches"),
                std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace strata::train
