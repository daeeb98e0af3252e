#include "trainer/distill.h"

#include <torch/torch.h>

#include <set>

#include "core/error.h"
#include "core/fs.h"
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
  std::shared_ptr<Model> teacher = make(d.teacher_model, input);
  const std::vector<std::pair<std::string, at::Tensor>> saved = load_state_dict(d.teacher);
  std::map<std::string, at::Tensor> by_name(saved.begin(), saved.end());
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  auto fill = [&](const std::string& name, at::Tensor& dst) {
    auto it = by_name.find(name);
    STRATA_CHECK_T(ConfigError, it != by_name.end(), where, "distill.teacher '", d.teacher,
                   "' has no tensor '", name, "' that distill.teacher_model (",
                   d.teacher_model.name, ") needs; set teacher_model to the architecture "
                   "the teacher was trained with");
    STRATA_CHECK_T(ConfigError, it->second.sizes() == dst.sizes(), where, "distill.teacher '",
                   d.teacher, "': '", name, "' has shape ", it->second.sizes(),
                   " but distill.teacher_model makes ", dst.sizes(),
                   "; set teacher_model to the architecture the teacher was trained with");
    dst.copy_(it->second);
    used.insert(name);
  };
  for (auto& p : teacher->named_parameters()) fill(p.key(), p.value());
  for (auto& b : teacher->named_buffers()) fill(b.key(), b.value());
  STRATA_CHECK_T(ConfigError, used.size() == by_name.size(), where, "distill.teacher '",
                 d.teacher, "' holds ", by_name.size(), " tensors but distill.teacher_model uses ",
                 used.size(), "; set teacher_model to the architecture the teacher was trained with");
  teacher->to(device);
  teacher->eval();
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  return teacher;
}

}  // namespace strata::train
