// Model parallelism against its theory, side by side in one run.
//
//   build/bin/parallel_bench pipeline [STEPS]   the pipeline bubble
//   build/bin/parallel_bench tp                 tensor-parallel traffic per layer
//
// Ranks are threads of this process talking gloo over TCP loopback (the
// tests' harness), so one binary needs no launcher.
//
// pipeline: the executor (distributed/pipeline_executor.h) runs gpipe and 1f1b over p
// stages and m microbatches. Each stage times its own forwards and
// backwards (busy); the step's wall time minus busy, over busy, is the idle
// share the bubble theory predicts as (p - 1) / m for equal stages. Two
// kinds of stage: "synthetic" stages sleep F ms forward and 2F backward (no
// CPU use, so p = 4 and 8 fit on a 2-core machine and only the schedule,
// the executor and the messages cost), and "compute" stages run real
// matrix products (p = 2: one core each).
//
// tp: one forward and backward of the GPT (b x s tokens, width h) at tp = t
// with n_layer 1 and 2; the difference is one transformer layer. Counted
// two ways: the elements the layer's collectives carry (a counting wrapper
// around the tp communicator) and the bytes that crossed the loopback
// interface (/proc/net/dev), per rank. Theory (Narayanan et al. 2021, 3.2):
// 4 all-reduces of b s h per layer (2 forward, 2 backward), each moving
// 2 (t - 1) / t of its size per rank in a ring: 8 b s h (t - 1) / t
// elements per rank per layer.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/strings.h"
#include "distributed/communicator.h"
#include "trainer/models/gpt.h"
#include "distributed/pipeline_executor.h"
#include "trainer/cli.h"

namespace st = strata::train;
namespace sd = strata::dist;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs body(rank communicator) on `world` threads; rethrows the first error.
void run_threads(int world, const std::function<void(std::shared_ptr<sd::Communicator>)>& body) {
  auto store = sd::make_memory_store();
  std::vector<std::thread> threads;
  std::mutex mu;
  std::string error;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        sd::GlooOptions o;
        o.store = store;
        o.rank = r;
        o.size = world;
        o.timeout = std::chrono::milliseconds(60000);
        body(sd::make_gloo_communicator(o));
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        if (error.empty()) error = strata::str("rank ", r, ": ", e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  if (!error.empty()) throw std::runtime_error(error);
}

// Sleeps `forward_ms` in forward and twice that in backward.
struct Sleep : torch::autograd::Function<Sleep> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            double ms) {
    ctx->saved_data["ms"] = ms;
    std::this_thread::sleep_for(std::chrono::microseconds(static_cast<int64_t>(ms * 1000)));
    return x * 1.0;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    const double ms = ctx->saved_data["ms"].toDouble();
    std::this_thread::sleep_for(std::chrono::microseconds(static_cast<int64_t>(2 * ms * 1000)));
    return {g[0], at::Tensor()};
  }
};

struct BubbleResult {
  double idle_over_busy = 0.0;
  int peak = 0;
};

// One (schedule, p, m) configuration; median over `steps` of the slowest
// stage's (wall - busy) / busy.
BubbleResult measure_bubble(bool synthetic, const std::string& schedule, int p, int m,
                            int steps) {
  // Compute stages: 2048 rows through 4 layers of 512 x 512 per step (~4
  // GFLOP forward), so a microbatch of even 1/16 of it outweighs a message.
  constexpr int64_t kRows = 2048, kWidth = 512, kLayers = 4;
  constexpr double kForwardMs = 8.0;  // synthetic: per microbatch
  std::vector<std::vector<double>> ratio(p);
  std::vector<int> peak(p);
  std::mutex build;
  run_threads(p, [&](std::shared_ptr<sd::Communicator> pp) {
    const int s = pp->rank();
    torch::nn::Sequential net;
    {
      std::lock_guard<std::mutex> lock(build);
      torch::manual_seed(1);
      for (int i = 0; i < kLayers; ++i) {
        net->push_back(torch::nn::Linear(kWidth, kWidth));
        net->push_back(torch::nn::GELU());
      }
    }
    sd::PipelineExecutor pipe(pp, schedule, m);
    double busy = 0.0;
    sd::StageFunctions fns;
    fns.forward = [&](const at::Tensor& x, int) {
      const auto t0 = Clock::now();
      at::Tensor y = synthetic ? Sleep::apply(x.requires_grad() ? x : x.detach().requires_grad_(),
                                              kForwardMs)
                               : net->forward(x);
      busy += since(t0);
      return y;
    };
    fns.loss = [](const at::Tensor& y, int) { return y.mean(); };
    fns.around_backward = [&](const std::function<void()>& backward, bool) {
      const auto t0 = Clock::now();
      backward();
      busy += since(t0);
    };
    const at::Tensor batch = at::randn({kRows, synthetic ? 16 : kWidth});
    for (int step = -1; step < steps; ++step) {  // step -1: warm-up
      pp->barrier()->wait();
      busy = 0.0;
      const auto t0 = Clock::now();
      pipe.train_step(batch, fns);
      const double wall = since(t0);
      net->zero_grad();
      if (step >= 0) ratio[s].push_back((wall - busy) / busy);
    }
    peak[s] = pipe.peak_activations();
  });
  BubbleResult r;
  for (int s = 0; s < p; ++s) {
    std::sort(ratio[s].begin(), ratio[s].end());
    r.idle_over_busy = std::max(r.idle_over_busy, ratio[s][ratio[s].size() / 2]);
    r.peak = std::max(r.peak, peak[s]);
  }
  return r;
}

void pipeline_table(int steps) {
  at::set_num_threads(1);
  std::printf("| stages | schedule | p | m | theory (p-1)/m | measured idle/busy | peak microbatches held |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (bool synthetic : {true, false}) {
    for (int p : synthetic ? std::vector<int>{2, 4, 8} : std::vector<int>{2}) {
      for (const char* schedule : {"gpipe", "1f1b"}) {
        for (int m : {1, 2, 4, 8, 16}) {
          const BubbleResult r = measure_bubble(synthetic, schedule, p, m, steps);
          std::printf("| %s | %s | %d | %d | %.3f | %.3f | %d |\n",
                      synthetic ? "synthetic" : "compute", schedule, p, m,
                      static_cast<double>(p - 1) / m, r.idle_over_busy, r.peak);
          std::fflush(stdout);
        }
      }
    }
  }
}

// Loopback bytes received so far (all of this host's lo traffic).
int64_t loopback_bytes() {
  std::ifstream in("/proc/net/dev");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    if (name != "lo") continue;
    std::istringstream fields(line.substr(colon + 1));
    int64_t bytes = 0;
    fields >> bytes;
    return bytes;
  }
  return 0;
}

// A communicator that counts the elements its all-reduces and all-gathers
// carry, then forwards.
class Counting final : public sd::Communicator {
 public:
  explicit Counting(std::shared_ptr<sd::Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  const char* backend() const override { return inner_->backend(); }
  bool supports(sd::Capability c) const override { return inner_->supports(c); }
  std::unique_ptr<sd::Work> all_reduce(at::Tensor& t, sd::ReduceOp op) override {
    all_reduce_elements += t.numel();
    ++all_reduces;
    return inner_->all_reduce(t, op);
  }
  std::unique_ptr<sd::Work> broadcast(at::Tensor& t, int root) override {
    return inner_->broadcast(t, root);
  }
  std::unique_ptr<sd::Work> all_gather(std::vector<at::Tensor>& out,
                                       const at::Tensor& in) override {
    all_gather_elements += in.numel() * static_cast<int64_t>(out.size());
    return inner_->all_gather(out, in);
  }
  std::unique_ptr<sd::Work> reduce_scatter(at::Tensor& out, std::vector<at::Tensor>& in,
                                           sd::ReduceOp op) override {
    return inner_->reduce_scatter(out, in, op);
  }
  std::unique_ptr<sd::Work> send(const at::Tensor& t, int peer, int tag) override {
    return inner_->send(t, peer, tag);
  }
  std::unique_ptr<sd::Work> recv(at::Tensor& t, int peer, int tag) override {
    return inner_->recv(t, peer, tag);
  }
  std::unique_ptr<sd::Work> barrier() override { return inner_->barrier(); }
  std::shared_ptr<sd::Communicator> split(int color, int key, const std::string& n) override {
    return inner_->split(color, key, n);
  }
  int64_t all_reduce_elements = 0, all_reduces = 0, all_gather_elements = 0;

 private:
  std::shared_ptr<sd::Communicator> inner_;
};

struct Traffic {
  int64_t all_reduces = 0;
  int64_t all_reduce_elements = 0;  // per rank, as issued
  int64_t all_gather_elements = 0;
  double wire_bytes_per_rank = 0.0;
};

Traffic gpt_step_traffic(int t, int64_t n_layer, int64_t b, int64_t s, int64_t h) {
  st::ModelSection cfg;
  cfg.name = "gpt";
  cfg.n_layer = n_layer;
  cfg.n_head = 8;
  cfg.d_model = h;
  cfg.seq_len = s;
  cfg.dropout = 0.0;
  torch::manual_seed(0);
  const at::Tensor ids = at::randint(0, 256, {b, s}, at::kLong);
  std::vector<Traffic> per(t);
  std::mutex build;
  int64_t before = 0, after = 0;
  run_threads(t, [&](std::shared_ptr<sd::Communicator> g) {
    auto counting = std::make_shared<Counting>(g);
    const st::InputShape shape{1, 1, 1, 256};
    st::ModelPart part;
    part.tp = counting;
    std::shared_ptr<st::Model> model;
    {
      std::lock_guard<std::mutex> lock(build);
      torch::manual_seed(0);
      model = st::make_gpt(cfg, shape, part);
    }
    g->barrier()->wait();
    if (g->rank() == 0) before = loopback_bytes();
    g->barrier()->wait();
    const int64_t barrier_elements = counting->all_reduce_elements;  // none: barriers uncounted
    at::Tensor logits = model->forward(ids);
    at::cross_entropy_loss(logits.reshape({-1, 256}), ids.reshape({-1})).backward();
    g->barrier()->wait();
    if (g->rank() == 0) after = loopback_bytes();
    per[g->rank()] = {counting->all_reduces, counting->all_reduce_elements - barrier_elements,
                      counting->all_gather_elements, 0.0};
  });
  Traffic r = per[0];
  r.wire_bytes_per_rank = static_cast<double>(after - before) / t;
  return r;
}

void tp_table() {
  at::set_num_threads(1);
  const int64_t b = 8, s = 128, h = 256;
  std::printf("GPT layer: b=%lld s=%lld h=%lld (fp32); per rank, one forward + backward; "
              "layer = n_layer 2 minus n_layer 1\n\n",
              static_cast<long long>(b), static_cast<long long>(s), static_cast<long long>(h));
  std::printf("| t | all-reduces per layer | elements all-reduced per layer | ring elements per layer (x 2(t-1)/t) | theory 8bsh(t-1)/t | loopback bytes per layer | theory bytes (x4) | measured / theory |\n");
  std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (int t : {2, 4}) {
    const Traffic one = gpt_step_traffic(t, 1, b, s, h);
    const Traffic two = gpt_step_traffic(t, 2, b, s, h);
    const int64_t reduces = two.all_reduces - one.all_reduces;
    const int64_t elements = two.all_reduce_elements - one.all_reduce_elements;
    const double ring = elements * 2.0 * (t - 1) / t;
    const double theory = 8.0 * b * s * h * (t - 1) / t;
    const double wire = two.wire_bytes_per_rank - one.wire_bytes_per_rank;
    std::printf("| %d | %lld | %lld | %.0f | %.0f | %.0f | %.0f | %.3f |\n", t,
                static_cast<long long>(reduces), static_cast<long long>(elements), ring, theory,
                wire, theory * 4, wire / (theory * 4));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return strata::train::run_main("parallel_bench", [&] {
    auto app = strata::train::make_app(
        "parallel_bench", "Pipeline bubbles vs (p-1)/m, and tensor-parallel bytes per GPT layer.");
    int steps = 5;
    auto* pipeline = app->add_subcommand("pipeline", "the pipeline bubble of gpipe and 1f1b");
    pipeline->add_option("steps", steps, "steps per measurement");
    auto* tp = app->add_subcommand("tp", "tensor-parallel bytes per GPT layer");
    app->require_subcommand(1);
    if (!strata::train::parse_args(*app, argc, argv)) return 0;
    STRATA_CHECK_T(UsageError, steps >= 1, "steps must be >= 1");
    if (pipeline->parsed()) pipeline_table(steps);
    if (tp->parsed()) tp_table();
    return 0;
  });
}
