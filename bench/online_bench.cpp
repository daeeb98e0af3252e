// Batch-1 online learning speed, side by side in one process (one thread):
//   hbp        Hedge Backpropagation through TrainStep (the fused CPU kernel)
//   hbp-aten   the same model and step with the kernel off (ATen ops)
//   ogd        the same network, hedge off: plain online backprop
//   mlp        plain online backprop of an nn.Linear MLP of the same depth
//              and width, through autograd (how a LibTorch user writes it)
// and where an hbp step's time goes (forward + loss, backward, optimizer,
// hedge), each part timed alone over the same instances. Prints
// instances/s and ratios to hbp; asserts nothing.
//
//   build/bin/online_bench [--depth 20] [--width 100] [--instances 20000]
#include <CLI/CLI.hpp>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <functional>

#include "trainer/data/stream.h"
#include "trainer/models/hbp.h"
#include "trainer/train_step.h"
#include "trainer/trainer.h"

namespace st = strata::train;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(const std::function<void()>& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

st::Recipe recipe_for(const std::string& model, int64_t depth, int64_t width, bool hedge) {
  st::Recipe r;
  r.model.name = model;
  r.model.hidden = {width};
  r.model.depth = depth;
  r.model.hbp.hedge = hedge;
  r.optimizer.name = "sgd";
  r.optimizer.lr = 0.01;
  r.optimizer.momentum = 0.0;
  r.optimizer.weight_decay = 0.0;
  r.data.batch_size = 1;
  return r;
}

struct Setup {
  st::Recipe recipe;
  st::ParallelModel pm;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<st::TrainStep> step;
};

std::unique_ptr<Setup> make(const st::Registries& reg, st::Recipe recipe, const st::InputShape& in) {
  auto s = std::make_unique<Setup>();
  s->recipe = std::move(recipe);
  torch::manual_seed(1);
  s->pm.model = reg.models.get(s->recipe.model.name, "", "model.name").build(s->recipe.model, in, {});
  s->pm.tp = strata::dist::make_self_communicator("tp");
  s->pm.pp = strata::dist::make_self_communicator("pp");
  s->optimizer = reg.optimizers.get("sgd", "", "optimizer.name").make(s->recipe, *s->pm.model);
  s->step = std::make_unique<st::TrainStep>(
      s->pm, *s->optimizer, std::vector<std::pair<std::string, at::Tensor>>{},
      st::model_loss(*s->pm.model, at::kCPU, at::kFloat), nullptr, at::Device(at::kCPU),
      st::train_step_options(s->recipe));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"batch-1 online learning speed"};
  int64_t depth = 20, width = 100, n = 20000;
  app.add_option("--depth", depth, "hidden layers");
  app.add_option("--width", width, "hidden width");
  app.add_option("--instances", n, "instances per contender");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(1);
  const st::Registries reg = st::builtin_registries();
  const st::InputShape in{1, 1, 50, 2};
  const st::StreamChunk data = st::synthetic_stream(1, 50, n, {8}, {1}, n)(0);
  std::vector<st::Batch> batches;
  for (int64_t i = 0; i < n; ++i) {
    batches.push_back(st::Batch{data.inputs.narrow(0, i, 1), data.targets.narrow(0, i, 1), 0, i});
  }
  auto rate = [&](Setup& s) {
    size_t i = 0;
    const auto next = [&] { return batches[i++ % batches.size()]; };
    for (int w = 0; w < 500; ++w) s.step->run(next, 0.01);  // warm-up
    i = 0;
    return static_cast<double>(n) / seconds([&] {
             for (int64_t k = 0; k < n; ++k) s.step->run(next, 0.01);
           });
  };
  struct Row {
    std::string name;
    double rate;
  };
  std::vector<Row> rows;
  auto hbp = make(reg, recipe_for("hbp", depth, width, true), in);
  rows.push_back({"hbp", rate(*hbp)});
  auto aten = make(reg, recipe_for("hbp", depth, width, true), in);
  std::dynamic_pointer_cast<st::HedgeNet>(aten->pm.model)->set_fused(false);
  rows.push_back({"hbp-aten", rate(*aten)});
  auto ogd = make(reg, recipe_for("hbp", depth, width, false), in);
  rows.push_back({"ogd", rate(*ogd)});
  auto mlp = make(reg, recipe_for("mlp", depth, width, false), in);
  rows.push_back({"mlp", rate(*mlp)});
  std::printf("batch-1 online learning, %lld x %lld ReLU network, 50 features, 2 classes, 1 thread, "
              "%lld instances each\n",
              static_cast<long long>(depth), static_cast<long long>(width),
              static_cast<long long>(n));
  std::printf("%-10s %14s %10s\n", "contender", "instances/s", "hbp/x");
  for (const Row& r : rows) {
    std::printf("%-10s %14.0f %10.2f\n", r.name.c_str(), r.rate, rows[0].rate / r.rate);
  }

  // Where an hbp step goes: each part alone, per instance.
  st::Model& m = *hbp->pm.model;
  torch::optim::Optimizer& opt = *hbp->optimizer;
  const int64_t k = std::min<int64_t>(n, 5000);
  m.train();
  const double fwd = seconds([&] {
    for (int64_t i = 0; i < k; ++i) {
      const st::Batch& b = batches[static_cast<size_t>(i)];
      m.loss(m.forward(b.inputs), b.targets);
    }
  });
  const double fwd_bwd = seconds([&] {
    for (int64_t i = 0; i < k; ++i) {
      const st::Batch& b = batches[static_cast<size_t>(i)];
      for (auto& p : m.parameters()) p.mutable_grad() = at::Tensor();
      m.loss(m.forward(b.inputs), b.targets).backward();
    }
  });
  const double optim = seconds([&] {
    for (int64_t i = 0; i < k; ++i) opt.step();
  });
  const double hedge = seconds([&] {
    for (int64_t i = 0; i < k; ++i) {
      m.loss(m.forward(batches[0].inputs), batches[0].targets);  // pending losses
      m.after_step([](at::Tensor&) {});
    }
  });
  const double us = 1e6 / static_cast<double>(k);
  std::printf("\nhbp step parts, microseconds per instance:\n");
  std::printf("  forward + loss      %8.1f\n", fwd * us);
  std::printf("  backward            %8.1f\n", (fwd_bwd - fwd) * us);
  std::printf("  optimizer (sgd)     %8.1f\n", optim * us);
  std::printf("  hedge update        %8.1f\n", (hedge - fwd) * us);
  std::printf("  whole TrainStep     %8.1f\n", 1e6 / rows[0].rate);
  return 0;
}
