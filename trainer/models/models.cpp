// Built-in models: the classifiers mlp, cnn, resnet_small; gpt (gpt.cpp).
#include "trainer/models/models.h"

#include <torch/nn.h>

#include <algorithm>

#include "core/error.h"
#include "core/strings.h"
#include "trainer/activation_checkpoint.h"
#include "trainer/models/gpt.h"
#include "trainer/models/hbp.h"

namespace strata::train {
namespace nn = torch::nn;

std::vector<std::string> Model::unit_names() const {
  std::vector<std::string> names;
  for (int64_t i = 0; i < checkpoint_units(); ++i) names.push_back(unit_name(static_cast<size_t>(i)));
  return names;
}

void Model::set_taps(const std::vector<std::string>& names) {
  const std::vector<std::string> all = unit_names();
  tapped_.assign(all.size(), false);
  taps_.clear();
  for (const auto& n : names) {
    const auto it = std::find(all.begin(), all.end(), n);
    STRATA_CHECK_T(ConfigError, it != all.end(), "no layer '", n, "' to take a hint from;",
                   did_you_mean(n, all), " this model has: ",
                   all.empty() ? std::string("none") : join(all, ", "));
    tapped_[static_cast<size_t>(it - all.begin())] = true;
  }
}

at::Tensor Model::loss(const at::Tensor& output, const at::Tensor& targets) {
  return torch::nn::functional::cross_entropy(output.reshape({-1, output.size(-1)}),
                                              targets.reshape({-1}));
}

namespace {

// Modules [begin, end) of `seq` applied to x; checkpointed when asked, with
// their buffers (BatchNorm statistics) restored after the recomputation.
at::Tensor run_range(nn::Sequential seq, size_t begin, size_t end, const at::Tensor& x,
                     bool checkpointed) {
  auto f = [seq, begin, end](const at::Tensor& in) mutable {
    at::Tensor y = in;
    for (size_t i = begin; i < end; ++i) y = (seq->begin() + static_cast<long>(i))->forward(y);
    return y;
  };
  if (!checkpointed) return f(x);
  std::vector<at::Tensor> buffers;
  for (size_t i = begin; i < end; ++i) {
    for (const auto& b : seq->ptr(i)->buffers()) buffers.push_back(b);
  }
  return checkpoint(f, x, std::move(buffers));
}

// flatten -> [Linear -> ReLU (-> Dropout)] per hidden width -> Linear.
// Names: net.0.weight, net.2.weight, ... (nn.Sequential numbering).
class Mlp final : public Model {
 public:
  Mlp(const ModelSection& c, const InputShape& in) {
    int64_t width = in.channels * in.height * in.width;
    for (int64_t h : c.hidden_widths()) {
      net_->push_back(nn::Linear(width, h));
      net_->push_back(nn::ReLU());
      if (c.dropout > 0) net_->push_back(nn::Dropout(c.dropout));
      width = h;
    }
    net_->push_back(nn::Linear(width, in.classes));
    register_module("net", net_);
  }
  at::Tensor forward(const at::Tensor& x) override {
    return net_->forward(x.flatten(1));
  }

 private:
  nn::Sequential net_;
};

// [Conv3x3 (no bias) -> BatchNorm -> ReLU -> MaxPool 2x2] per entry of
// `channels`, then flatten -> Linear(fc) -> ReLU (-> Dropout) -> Linear(K).
class Cnn final : public Model {
 public:
  Cnn(const ModelSection& c, const InputShape& in) {
    STRATA_CHECK_T(ConfigError, !c.channels.empty(),
                   "model.channels: the cnn needs at least one stage");
    int64_t ch = in.channels, h = in.height, w = in.width;
    for (int64_t out : c.channels) {
      features_->push_back(nn::Conv2d(
          nn::Conv2dOptions(ch, out, 3).padding(1).bias(false)));
      features_->push_back(nn::BatchNorm2d(out));
      features_->push_back(nn::ReLU());
      features_->push_back(nn::MaxPool2d(2));
      ++stages_;
      ch = out;
      h /= 2;
      w /= 2;
      STRATA_CHECK_T(ConfigError, h >= 1 && w >= 1, "model.channels: ",
                     c.channels.size(), " pooling stages shrink a ", in.height,
                     "x", in.width, " input to nothing; use fewer stages");
    }
    classifier_->push_back(nn::Linear(ch * h * w, c.fc));
    classifier_->push_back(nn::ReLU());
    if (c.dropout > 0) classifier_->push_back(nn::Dropout(c.dropout));
    classifier_->push_back(nn::Linear(c.fc, in.classes));
    register_module("features", features_);
    register_module("classifier", classifier_);
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor y = x;
    for (size_t s = 0; s < stages_; ++s) {
      y = unit_output(s, run_range(features_, 4 * s, 4 * s + 4, y, checkpointed(s)));
    }
    return classifier_->forward(y.flatten(1));
  }
  // A stage: conv -> BN -> ReLU -> pool.
  int64_t checkpoint_units() const override { return static_cast<int64_t>(stages_); }

 protected:
  std::string unit_kind() const override { return "stage"; }

 private:
  size_t stages_ = 0;
  nn::Sequential features_;
  nn::Sequential classifier_;
};

// y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a
// 1x1 strided conv + BN when the shape changes, else identity.
// reference: He et al. 2016, "Deep Residual Learning", Fig. 2.
class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride)
      : conv1_(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)),
        bn1_(out),
        conv2_(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)),
        bn2_(out) {
    register_module("conv1", conv1_);
    register_module("bn1", bn1_);
    register_module("conv2", conv2_);
    register_module("bn2", bn2_);
    if (stride != 1 || in != out) {
      shortcut_->push_back(nn::Conv2d(
          nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)));
      shortcut_->push_back(nn::BatchNorm2d(out));
      register_module("shortcut", shortcut_);
    }
  }
  at::Tensor forward(at::Tensor x) {
    at::Tensor y = torch::relu(bn1_->forward(conv1_->forward(x)));
    y = bn2_->forward(conv2_->forward(y));
    return torch::relu(y + (shortcut_->is_empty() ? x : shortcut_->forward(x)));
  }

 private:
  nn::Conv2d conv1_;
  nn::BatchNorm2d bn1_;
  nn::Conv2d conv2_;
  nn::BatchNorm2d bn2_;
  nn::Sequential shortcut_;
};
TORCH_MODULE(BasicBlock);

// stem conv3x3 -> stages of `blocks` BasicBlocks (stride 2 entering every
// stage after the first) -> global average pool -> Linear(K).
class ResNetSmall final : public Model {
 public:
  ResNetSmall(const ModelSection& c, const InputShape& in) {
    STRATA_CHECK_T(ConfigError, !c.channels.empty(),
                   "model.channels: resnet_small needs at least one stage");
    const int64_t c0 = c.channels.front();
    stem_->push_back(nn::Conv2d(
        nn::Conv2dOptions(in.channels, c0, 3).padding(1).bias(false)));
    stem_->push_back(nn::BatchNorm2d(c0));
    stem_->push_back(nn::ReLU());
    int64_t ch = c0;
    stage_ends_.push_back(0);
    for (size_t s = 0; s < c.channels.size(); ++s) {
      for (int64_t b = 0; b < c.blocks; ++b) {
        const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
        stages_->push_back(BasicBlock(ch, c.channels[s], stride));
        ch = c.channels[s];
      }
      stage_ends_.push_back(stages_->size());
    }
    if (c.dropout > 0) head_->push_back(nn::Dropout(c.dropout));
    head_->push_back(nn::Linear(ch, in.classes));
    register_module("stem", stem_);
    register_module("stages", stages_);
    register_module("head", head_);
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor y = stem_->forward(x);
    for (size_t s = 0; s + 1 < stage_ends_.size(); ++s) {
      y = unit_output(s, run_range(stages_, stage_ends_[s], stage_ends_[s + 1], y,
                                   checkpointed(s)));
    }
    return head_->forward(y.mean({2, 3}));
  }
  // A stage: its `blocks` residual blocks.
  int64_t checkpoint_units() const override {
    return static_cast<int64_t>(stage_ends_.size()) - 1;
  }

 protected:
  std::string unit_kind() const override { return "stage"; }

 private:
  std::vector<size_t> stage_ends_;  // stage s: stages_[ends[s], ends[s + 1])
  nn::Sequential stem_;
  nn::Sequential stages_;
  nn::Sequential head_;
};

}  // namespace

void register_builtin_models(ModelRegistry& registry) {
  registry.add("mlp", classifier<Mlp>());
  registry.add("cnn", classifier<Cnn>());
  registry.add("resnet_small", classifier<ResNetSmall>());
  registry.add("gpt", gpt_spec());
  registry.add("hbp", classifier<HedgeNet>());
}

const char* task_name(Task task) {
  return task == Task::kLanguageModel ? "language modelling" : "classification";
}

std::vector<std::string> models_where(const ModelRegistry& registry,
                                      const std::function<bool(const ModelSpec&)>& pred) {
  std::vector<std::string> out;
  for (const auto& name : registry.names()) {
    if (pred(*registry.find(name))) out.push_back(name);
  }
  return out;
}

int64_t parameter_count(const torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

}  // namespace strata::train
