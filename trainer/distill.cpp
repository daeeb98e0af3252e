#include "trainer/distill.h"

#include <torch/torch.h>


#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "trainer/checkpoint.h"

namespace strata::train {

at::Tensor distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                             const at::Tensor& targets, double alpha, double temperature) {
  const int64_t k = student_logits.size(-1);
  const at::Tensor s = student_logits.reshape({-1, k}).to(at::kFloat);
  const at::Tensor t = teacher_logits.reshape({-1, k}).to(at::kFloat).detach();
  const at::Tensor ce = at::cross_entropy_loss(s, targets.reshape({-1}));
  if (alpha == 0) return ce;
  const at::Tensor log_p_s = at::log_softmax(s / temperature, -1);
  const at::Tensor log_p_t = at::log_softmax(t / temperature, -1);
  // KL(p_t || p_s) per row, averaged over rows ("batchmean").
  const at::Tensor kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean();
  return alpha * temperature * temperature * kl + (1.0 - alpha) * ce;
}

std::shared_ptr<Model> load_teacher(const Recipe& recipe, const ModelRegistry& models,
                                    const InputShape& input, c10::Device device) {
  const DistillSection& d = recipe.distill;
  const std::string where = recipe.where("distill.teacher");
  STRATA_CHECK_T(IoError, path_exists(d.teacher), where, "distill.teacher = '", d.teacher,
                 "' does not exist; train the teacher first (e.g. strata-train "
                 "recipes/fmnist_teacher.yaml) and point this at its run directory's model.pt");
  const auto& make = models.get(d.teacher_model.name, recipe.where("distill.teacher_model.name"),
                                "distill.teacher_model.name");
  std::shared_ptr<Model> teacher = make.build(d.teacher_model, input, ModelPart{});
  assign_state_dict(*teacher, load_state_dict(d.teacher),
                    str(where, "distill.teacher '", d.teacher, "'"),
                    str("set teacher_model to the architecture the teacher was trained with "
                        "(distill.teacher_model.name is ", d.teacher_model.name, ")"));
  teacher->to(device);
  teacher->eval();
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  return teacher;
}

std::vector<std::pair<std::string, std::string>> parse_hint_pairs(const std::string& text,
                                                                  const std::string& where) {
  std::vector<std::pair<std::string, std::string>> pairs;
  if (text.empty()) return pairs;
  for (const std::string& item : split(text, ',')) {
    const std::vector<std::string> st = split(item, ':');
    STRATA_CHECK_T(ConfigError, st.size() == 2 && !st[0].empty() && !st[1].empty(), where,
                   "distill.hints: '", item, "' is not STUDENT_UNIT:TEACHER_UNIT; write "
                   "pairs like 'stage1:stage1,stage2:stage2' (the models' unit names: stageN "
                   "for CNNs, blockN for transformers)");
    pairs.emplace_back(st[0], st[1]);
  }
  return pairs;
}

namespace {

// The channel dimension: 1 of [B, C, H, W], the last otherwise.
int64_t channel_dim(const at::Tensor& t) { return t.dim() == 4 ? 1 : t.dim() - 1; }

}  // namespace

HintLoss::HintLoss(std::vector<std::pair<std::string, std::string>> pairs, Model& student,
                   Model& teacher, const at::Tensor& sample)
    : pairs_(std::move(pairs)) {
  STRATA_CHECK_T(ConfigError, !pairs_.empty(), "distill.hints: no pairs");
  std::vector<std::string> s_names, t_names;
  for (const auto& [s, t] : pairs_) {
    s_names.push_back(s);
    t_names.push_back(t);
  }
  student.set_taps(s_names);
  teacher.set_taps(t_names);
  {
    torch::NoGradGuard no_grad;
    const bool was_training = student.is_training();
    student.eval();  // the probe must not move BatchNorm statistics
    student.forward(sample);
    student.train(was_training);
    teacher.forward(sample);
  }
  for (size_t i = 0; i < pairs_.size(); ++i) {
    const at::Tensor& s = student.taps().at(pairs_[i].first);
    const at::Tensor& t = teacher.taps().at(pairs_[i].second);
    STRATA_CHECK_T(ConfigError, s.dim() == t.dim(), "distill.hints: student '",
                   pairs_[i].first, "' is ", s.dim(), "-D ", s.sizes(), " but teacher '",
                   pairs_[i].second, "' is ", t.dim(), "-D ", t.sizes(),
                   "; pair units of the same kind (image stages with image stages)");
    STRATA_CHECK_T(ConfigError, t.dim() == 4 || s.sizes().slice(0, s.dim() - 1) ==
                                                    t.sizes().slice(0, t.dim() - 1),
                   "distill.hints: student '", pairs_[i].first, "' ", s.sizes(),
                   " and teacher '", pairs_[i].second, "' ", t.sizes(),
                   " differ in more than their last dimension");
    const int64_t cs = s.size(channel_dim(s)), ct = t.size(channel_dim(t));
    proj_.push_back(register_module("proj" + std::to_string(i),
                                    torch::nn::Linear(torch::nn::LinearOptions(cs, ct))));
    teacher_spatial_.push_back(t.dim() == 4 ? std::vector<int64_t>{t.size(2), t.size(3)}
                                            : std::vector<int64_t>{});
  }
  to(sample.device());
}

at::Tensor HintLoss::forward(const Model& student, const Model& teacher) {
  at::Tensor total;
  for (size_t i = 0; i < pairs_.size(); ++i) {
    at::Tensor s = student.taps().at(pairs_[i].first);
    const at::Tensor t = teacher.taps().at(pairs_[i].second).detach().to(at::kFloat);
    if (s.dim() == 4) {
      if (s.size(2) != teacher_spatial_[i][0] || s.size(3) != teacher_spatial_[i][1]) {
        s = at::adaptive_avg_pool2d(s, teacher_spatial_[i]);
      }
      s = s.movedim(1, -1);
    }
    at::Tensor p = proj_[i]->forward(s);
    if (t.dim() == 4) p = p.movedim(-1, 1);
    at::Tensor mse = at::mse_loss(p.to(at::kFloat), t);
    total = total.defined() ? total + mse : mse;
  }
  return total / static_cast<double>(pairs_.size());
}

}  // namespace strata::train
