#include "parts.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn.h>
#include <torch/optim/optimizer.h>

#include "core/error.h"
#include "core/random.h"
#include "core/strings.h"
#include "trainer/data/dataset.h"
#include "trainer/data/sampler.h"

namespace custom {
namespace st = strata::train;
namespace nn = torch::nn;
namespace {

// ---- the model ------------------------------------------------------------

// Input size, model.hidden, classes: layer i maps widths[i] to widths[i + 1].
std::vector<int64_t> layer_widths(const st::ModelSection& c, const st::InputShape& in) {
  std::vector<int64_t> widths{in.channels * in.height * in.width};
  widths.insert(widths.end(), c.hidden.begin(), c.hidden.end());
  widths.push_back(in.classes);
  return widths;
}

// Layer list: layer 0 flattens the image and projects it to hidden[0];
// layer i < n maps hidden[i-1] to hidden[i]; layer n is the head. A stage
// builds layers [part.layer_begin, part.layer_end) and keeps their names
// ("layers.<i>"), so the stages' state dicts join into the whole model's.
class WideMlp final : public st::Model {
 public:
  WideMlp(const st::ModelSection& c, const st::InputShape& in, const st::ModelPart& part) {
    const int64_t n = static_cast<int64_t>(c.hidden.size());
    const int64_t end = part.layer_end < 0 ? n + 1 : part.layer_end;
    const std::vector<int64_t> widths = layer_widths(c, in);
    flatten_ = part.layer_begin == 0;
    layers_ = register_module("layers", nn::ModuleDict());
    // Every layer is drawn, in order, whatever this stage keeps: the
    // stages together hold the same model as one process.
    for (int64_t i = 0; i <= n; ++i) {
      nn::Linear l(widths[i], widths[i + 1]);
      if (i < part.layer_begin || i >= end) continue;
      layers_->update(std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>>{
          {std::to_string(i), l.ptr()}});
      kept_.push_back(l);
      relu_.push_back(i < n);
    }
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = flatten_ ? x.flatten(1) : x;
    for (size_t i = 0; i < kept_.size(); ++i) {
      h = kept_[i]->forward(h);
      if (relu_[i]) h = at::relu(h);
    }
    return h;
  }

 private:
  bool flatten_ = true;
  nn::ModuleDict layers_{nullptr};
  std::vector<nn::Linear> kept_;
  std::vector<bool> relu_;
};

st::ModelSpec wide_mlp_spec() {
  st::ModelSpec spec;
  spec.build = [](const st::ModelSection& c, const st::InputShape& in, const st::ModelPart& p) {
    return std::static_pointer_cast<st::Model>(std::make_shared<WideMlp>(c, in, p));
  };
  spec.task = st::Task::kClassification;
  spec.layer_weights = [](const st::ModelSection& c, const st::InputShape& in) {
    const std::vector<int64_t> widths = layer_widths(c, in);
    std::vector<int64_t> w;
    for (size_t i = 0; i + 1 < widths.size(); ++i) w.push_back(widths[i] * widths[i + 1]);
    return w;
  };
  spec.layer_list = "input projection, one layer per model.hidden width after the first, head";
  return spec;
}

// ---- the dataset ----------------------------------------------------------

// Fashion-MNIST, each image average-pooled 2 x 2 (28 x 28 -> 14 x 14),
// normalised with the training split's statistics.
std::pair<at::Tensor, at::Tensor> pooled(const st::ImageDataset& d) {
  auto [x, y] = st::dataset_tensors(d, 0, d.size);
  return {at::avg_pool2d(x, 2), y};
}

// Micro-batch g of rank r: samples of the epoch's shuffled order (a pure
// function of seed and epoch), rank r's strided share, in batches.
class PooledStream final : public st::BatchSource {
 public:
  PooledStream(at::Tensor x, at::Tensor y, int64_t batch, uint64_t seed,
               const st::StreamRequest& r)
      : x_(std::move(x)), y_(std::move(y)), batch_(batch), seed_(seed), r_(r),
        g_(r.start_batch) {}
  st::Batch next() override {
    const int64_t epoch = g_ / r_.batches_per_epoch, index = g_ % r_.batches_per_epoch;
    if (epoch != order_epoch_) {
      at::Generator gen = at::detail::createCPUGenerator(strata::mix_seed(seed_, epoch));
      order_ = at::randperm(x_.size(0), gen, at::kLong)
                   .slice(0, r_.rank, x_.size(0), r_.world);  // this rank's share
      order_epoch_ = epoch;
    }
    const at::Tensor idx = order_.slice(0, index * batch_, (index + 1) * batch_);
    ++g_;
    return st::Batch{x_.index_select(0, idx), y_.index_select(0, idx), epoch, index};
  }

 private:
  at::Tensor x_, y_;
  int64_t batch_;
  uint64_t seed_;
  st::StreamRequest r_;
  int64_t g_;
  int64_t order_epoch_ = -1;
  at::Tensor order_;
};

st::LoadedData load_fmnist14(const st::Recipe& recipe, int rank, int world) {
  const st::DataSection& d = recipe.data;
  const auto [train_x, train_y] = pooled(
      st::load_fashion_mnist(d.root, st::Split::kTrain, d.train_subset));
  const auto [test_x, test_y] = pooled(
      st::load_fashion_mnist(d.root, st::Split::kTest, d.test_subset));
  st::LoadedData out;
  out.task = st::Task::kClassification;
  out.shape = st::InputShape{1, 14, 14, 10};
  out.train_samples = train_x.size(0);
  const auto [begin, end] = st::shard_range(test_x.size(0), rank, world);
  out.eval_inputs = test_x.slice(0, begin, end);
  out.eval_targets = test_y.slice(0, begin, end);
  out.eval_samples = test_x.size(0);
  const int64_t batch = d.batch_size;
  const uint64_t seed = static_cast<uint64_t>(recipe.run.seed);
  at::Tensor x = train_x, y = train_y;
  out.stream = [x, y, batch, seed](const st::StreamRequest& r) -> std::unique_ptr<st::BatchSource> {
    return std::make_unique<PooledStream>(x, y, batch, seed, r);
  };
  // Federated clients hold their share of the samples in memory.
  out.train_rows = [x, y](const std::vector<int64_t>& indices) {
    const at::Tensor idx = at::tensor(indices, at::kLong);
    return std::make_pair(x.index_select(0, idx), y.index_select(0, idx));
  };
  const at::Tensor labels = y.contiguous();
  out.train_labels.assign(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
  out.summary = strata::str(out.train_samples, " training / ", out.eval_samples,
                            " test images of 14 x 14");
  return out;
}

// ---- the optimizer --------------------------------------------------------

struct SignumOptions : torch::optim::OptimizerCloneableOptions<SignumOptions> {
  explicit SignumOptions(double lr) : lr_(lr) {}
  double get_lr() const override { return lr_; }
  void set_lr(const double lr) override { lr_ = lr; }
  double lr_;
  double momentum = 0.9;
};

struct SignumState : torch::optim::OptimizerCloneableParamState<SignumState> {
  at::Tensor momentum;
};

// m <- beta m + (1 - beta) g; w <- w - lr sign(m).
class Signum final : public torch::optim::Optimizer {
 public:
  Signum(std::vector<at::Tensor> params, SignumOptions o)
      : Optimizer({torch::optim::OptimizerParamGroup(std::move(params))},
                  std::make_unique<SignumOptions>(o)) {}
  at::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    at::Tensor loss = closure ? closure() : at::Tensor();
    for (auto& group : param_groups()) {
      const auto& o = static_cast<const SignumOptions&>(group.options());
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto* st = static_cast<SignumState*>(st::find_param_state(*this, p));
        if (st == nullptr) {
          auto fresh = std::make_unique<SignumState>();
          fresh->momentum = at::zeros_like(p);
          st = fresh.get();
          st::set_param_state(*this, p, std::move(fresh));
        }
        st->momentum.mul_(o.momentum).add_(p.grad(), 1.0 - o.momentum);
        p.add_(st->momentum.sign(), -o.lr_);
      }
    }
    return loss;
  }
};

st::OptimizerSpec signum_spec() {
  st::OptimizerSpec spec;
  spec.make = [](const st::Recipe& r, torch::nn::Module& model) {
    STRATA_CHECK_T(ConfigError, r.optimizer.momentum >= 0 && r.optimizer.momentum < 1,
                   r.where("optimizer.momentum"), "signum needs optimizer.momentum in [0, 1)");
    SignumOptions o(r.optimizer.lr);
    o.momentum = r.optimizer.momentum;
    return std::unique_ptr<torch::optim::Optimizer>(new Signum(model.parameters(), o));
  };
  // The codec: how a checkpoint carries this state by parameter name (and
  // so in any parallel layout).
  spec.state.save = [](const torch::optim::OptimizerParamState& s) {
    return std::vector<std::pair<std::string, at::Tensor>>{
        {"momentum", static_cast<const SignumState&>(s).momentum}};
  };
  spec.state.load = [](const std::map<std::string, at::Tensor>& fields, const at::Tensor&) {
    auto it = fields.find("momentum");
    STRATA_CHECK_T(ConfigError, it != fields.end(), "no 'momentum'; was it written by signum?");
    auto st = std::make_unique<SignumState>();
    st->momentum = it->second;
    return std::unique_ptr<torch::optim::OptimizerParamState>(std::move(st));
  };
  return spec;
}

}  // namespace

void register_parts(st::Registries& registries) {
  registries.models.add("wide_mlp", wide_mlp_spec());
  registries.datasets.add("fmnist14", {load_fmnist14, st::Task::kClassification});
  registries.optimizers.add("signum", signum_spec());
}

}  // namespace custom
