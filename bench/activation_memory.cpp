// Activation checkpointing on the GPT recipe: peak memory and step time with
// train.activation_checkpointing none / full / every_k, side by side in one
// run, with ratios against none.
//
//   build/bin/activation_memory [RECIPE] [STEPS] [REPS] [overrides...]
//   (default recipes/gpt_tiny.yaml, 10 timed steps per repetition, 3
//   repetitions; the policies take turns so drift hits all alike)
//
// Memory is counted, not sampled: a wrapper around LibTorch's CPU allocator
// (installed with c10::SetCPUAllocator) tracks live bytes; a step's peak is
// the most bytes live during it minus those live before it -- activations
// plus the gradients it creates (the same for every policy). Step time is
// forward + backward + clip + optimizer step, median over the timed steps.
#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "core/strings.h"
#include "trainer/activation_checkpoint.h"
#include "trainer/data/text.h"
#include "trainer/optim.h"
#include "trainer/trainer.h"
#include "trainer/cli.h"

namespace st = strata::train;

namespace {

// Context == data pointer (what raw_allocate, used inside LibTorch,
// requires); the base allocation and its size live in a side table.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) { instance_ = this; }

  // LibTorch 1.13 declares allocate const, 2.x not: provide both.
  c10::DataPtr allocate(size_t n) const { return counted(n); }
  c10::DataPtr allocate(size_t n) { return counted(n); }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::memcpy(dest, src, count);
  }

  int64_t live() const { return live_.load(); }
  int64_t peak() const { return peak_.load(); }
  void reset_peak() { peak_.store(live_.load()); }

 private:
  static void release(void* data) {
    CountingAllocator* self = instance_;
    c10::DataPtr inner;  // freed when it leaves scope, outside the lock
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      auto it = self->blocks_.find(data);
      if (it == self->blocks_.end()) return;
      self->live_ -= it->second.second;
      inner = std::move(it->second.first);
      self->blocks_.erase(it);
    }
  }
  c10::DataPtr counted(size_t n) const {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    if (data == nullptr) return inner;  // zero-byte allocations
    const int64_t bytes = static_cast<int64_t>(n);
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks_.emplace(data, std::make_pair(std::move(inner), bytes));
    }
    const int64_t now = live_ += bytes;
    int64_t p = peak_.load();
    while (now > p && !peak_.compare_exchange_weak(p, now)) {
    }
    return {data, data, &release, c10::Device(c10::kCPU)};
  }

  static CountingAllocator* instance_;
  c10::Allocator* base_;
  mutable std::mutex mu_;
  mutable std::unordered_map<void*, std::pair<c10::DataPtr, int64_t>> blocks_;
  mutable std::atomic<int64_t> live_{0}, peak_{0};
};
CountingAllocator* CountingAllocator::instance_ = nullptr;

struct Result {
  std::vector<double> step_s;
  int64_t peak_bytes = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int bench(int argc, char** argv);

int main(int argc, char** argv) {
  return st::run_main("activation_memory", [&] { return bench(argc, argv); });
}

int bench(int argc, char** argv) {
  auto app = st::make_app("activation_memory",
                          "Peak step memory and step time with activation checkpointing none / "
                          "full / every_k on a GPT recipe.");
  std::string recipe_path = "recipes/gpt_tiny.yaml";
  int steps = 10, reps = 3;
  std::vector<std::string> overrides;
  app->add_option("recipe", recipe_path, "the GPT recipe");
  app->add_option("steps", steps, "steps per measurement");
  app->add_option("reps", reps, "repetitions (the median is reported)");
  app->add_option("overrides", overrides, "section.key=value overrides")->type_name("KEY=VALUE...");
  if (!st::parse_args(*app, argc, argv)) return 0;
  STRATA_CHECK_T(UsageError, steps >= 1 && reps >= 1, "steps and reps must be >= 1");
  static CountingAllocator counting(c10::GetCPUAllocator());
  c10::SetCPUAllocator(&counting, /*priority=*/255);

  const st::Recipe base = st::load_recipe(recipe_path, overrides);
  const st::Registries reg = st::builtin_registries();
  const st::ModelSection& m = base.model;
  st::TextCorpus corpus = st::load_text_corpus(base.data.text, base.data.val_fraction, m.seq_len);
  auto text = st::byte_tokens(std::move(corpus.train));
  at::set_num_threads(base.run.threads > 0 ? static_cast<int>(base.run.threads)
                                           : static_cast<int>(std::thread::hardware_concurrency()));

  const std::vector<std::string> policies{"none", "full", "every_k"};
  std::map<std::string, Result> results;
  for (int rep = 0; rep < reps; ++rep) {
    for (const auto& policy : policies) {
      st::Recipe r = base;
      r.train.activation_checkpointing = policy;
      torch::manual_seed(0);
      auto model = reg.models.get(m.name, "", "model.name").build(m, st::InputShape{1, 1, 1, 256}, {});
      model->set_checkpointing(st::checkpoint_plan(policy, r.train.checkpoint_every,
                                                   model->checkpoint_units(), recipe_path));
      auto opt = reg.optimizers.get(r.optimizer.name, "", "optimizer.name").make(r, *model);
      st::TextLoaderOptions lo;
      lo.batch_size = r.data.batch_size;
      lo.seq_len = m.seq_len;
      st::TextLoader loader(text, lo, 0);
      Result& res = results[policy];
      for (int s = 0; s < steps + 2; ++s) {  // 2 warm-up steps
        st::Batch b = loader.next();
        for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
        counting.reset_peak();
        const int64_t before = counting.live();
        const auto t0 = std::chrono::steady_clock::now();
        at::Tensor logits = model->forward(b.inputs);
        torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                             b.targets.reshape({-1}))
            .backward();
        logits = at::Tensor();
        if (r.train.clip_grad_norm > 0) st::clip_grad_norm(model->parameters(), r.train.clip_grad_norm);
        opt->step();
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (s >= 2) {
          res.step_s.push_back(dt);
          res.peak_bytes = std::max(res.peak_bytes, counting.peak() - before);
        }
      }
    }
  }
  const Result& none = results["none"];
  std::printf("GPT %s: n_layer %lld, d_model %lld, seq_len %lld, batch %lld, %d threads; "
              "%d timed steps x %d repetitions per policy (every_k: k = %lld)\n\n",
              recipe_path.c_str(), static_cast<long long>(m.n_layer),
              static_cast<long long>(m.d_model), static_cast<long long>(m.seq_len),
              static_cast<long long>(base.data.batch_size), at::get_num_threads(), steps, reps,
              static_cast<long long>(base.train.checkpoint_every));
  std::printf("| activation_checkpointing | step peak MiB | vs none | step ms (median) | vs none |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: |\n");
  for (const auto& policy : policies) {
    const Result& r = results[policy];
    std::printf("| %s | %.1f | %.2f | %.1f | %.2f |\n", policy.c_str(),
                static_cast<double>(r.peak_bytes) / (1 << 20),
                static_cast<double>(r.peak_bytes) / static_cast<double>(none.peak_bytes),
                1e3 * median(r.step_s), median(r.step_s) / median(none.step_s));
  }
  return 0;
}
