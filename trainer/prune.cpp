#include "trainer/prune.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/strings.h"

namespace strata::train {

namespace {

bool excluded(const std::string& name, const std::string& exclude) {
  for (const std::string& part : split(exclude, ',')) {
    const size_t b = part.find_first_not_of(' '), e = part.find_last_not_of(' ');
    const std::string p = b == std::string::npos ? std::string() : part.substr(b, e - b + 1);
    if (!p.empty() && name.find(p) != std::string::npos) return true;
  }
  return false;
}

// The mask keeping the entries of `magnitudes` above the k-th smallest of
// `pool` (k = floor(sparsity * pool's size)); all ones for k = 0.
at::Tensor keep_above(const at::Tensor& magnitudes, const at::Tensor& pool, double sparsity) {
  const auto k = static_cast<int64_t>(std::floor(sparsity * static_cast<double>(pool.numel())));
  if (k == 0) return at::ones_like(magnitudes);
  const at::Tensor threshold = std::get<0>(pool.kthvalue(k));
  return magnitudes.gt(threshold).to(magnitudes.scalar_type());
}

}  // namespace

Pruner::Pruner(const PruneSection& section, torch::nn::Module& model, int64_t total_steps,
               const std::string& where, const std::vector<ChannelGroup>& groups)
    : s_(section), start_(section.start_step),
      end_(section.end_step > 0 ? section.end_step : total_steps - 1) {
  STRATA_CHECK_T(ConfigError, s_.sparsity >= 0.0 && s_.sparsity < 1.0, where,
                 "train.prune.sparsity ", s_.sparsity,
                 " is outside [0, 1): it is the fraction of the weights set to zero (0.9 keeps "
                 "one in ten; 0 turns pruning off)");
  STRATA_CHECK_T(ConfigError, end_ < total_steps, where, "train.prune.end_step ", end_,
                 " is past the run's last mask update (step ", total_steps - 1, " of ",
                 total_steps, "): the final sparsity would never be reached; lower it, or set 0 "
                 "for the last step");
  STRATA_CHECK_T(ConfigError, start_ < end_, where, "train.prune.start_step ", start_,
                 " must come before the end of the ramp (train.prune.end_step ", end_,
                 s_.end_step > 0 ? "" : ", the run's last step", ")");
  if (s_.structure == "channels") {
    STRATA_CHECK_T(ConfigError, s_.scope == "layer", where,
                   "train.prune.structure=channels prunes each layer's channels to the sparsity "
                   "on its own (norms of different layers do not compare): set "
                   "train.prune.scope=layer");
    const auto params = model.named_parameters();
    for (const ChannelGroup& g : groups) {
      if (excluded(g.layer, s_.exclude)) continue;
      Channels c{g.layer, params[g.layer], {}, {}, {}};
      for (const std::string& t : g.zeroed) c.zeroed.push_back(params[t]);
      c.set_keep(at::ones({g.channels}, c.weight.options()));
      channels_.push_back(std::move(c));
    }
    STRATA_CHECK_T(ConfigError, !channels_.empty(), where,
                   "train.prune.structure=channels: the model has no conv or linear layer whose "
                   "channels every reader can lose (Note [Channel groups]: a channel that feeds a "
                   "residual add, attention heads or the output stays)",
                   s_.exclude.empty() ? "" : " less train.prune.exclude '" + s_.exclude + "'",
                   "; prune with structure=weights");
    return;
  }
  for (auto& p : model.named_parameters()) {
    if (p.value().dim() < 2 || excluded(p.key(), s_.exclude)) continue;
    entries_.push_back({p.key(), p.value(), at::ones_like(p.value(), at::MemoryFormat::Preserve)});
  }
  STRATA_CHECK_T(ConfigError, !entries_.empty(), where,
                 "train.prune: the model has no weight of two or more dimensions left to prune "
                 "(train.prune.exclude is '", s_.exclude, "')");
}

double Pruner::target(int64_t step) const {
  if (step <= start_) return 0.0;
  if (step >= end_) return s_.sparsity;
  const double progress =
      static_cast<double>(step - start_) / static_cast<double>(end_ - start_);
  return s_.sparsity * (1.0 - std::pow(1.0 - progress, 3.0));
}

bool Pruner::update(int64_t step) {
  if (s_.sparsity == 0.0 || step < start_ || step > end_) return false;
  if ((step - start_) % s_.every != 0 && step != end_) return false;
  prune_to(target(step));
  return true;
}

void Pruner::prune_to(double sparsity) {
  torch::NoGradGuard no_grad;
  if (!channels_.empty()) {
    prune_channels_to(sparsity);
    return;
  }
  if (s_.scope == "layer") {
    for (Entry& e : entries_) {
      const at::Tensor m = e.weight.detach().abs();
      e.mask = keep_above(m, m.flatten(), sparsity);
    }
  } else {
    std::vector<at::Tensor> all;
    for (const Entry& e : entries_) all.push_back(e.weight.detach().abs().flatten());
    const at::Tensor pool = at::cat(all);
    for (Entry& e : entries_) e.mask = keep_above(e.weight.detach().abs(), pool, sparsity);
  }
  masking_ = sparsity > 0.0;
  apply();
}

// Each group's `floor(sparsity * channels)` channels (at most all but one)
// of the smallest weight-row norms pruned; ties go to the lower index, so
// channels already zero stay pruned as the ramp rises.
void Pruner::prune_channels_to(double sparsity) {
  for (Channels& c : channels_) {
    const int64_t n = c.keep.numel();
    const int64_t k =
        std::min(n - 1, static_cast<int64_t>(std::floor(sparsity * static_cast<double>(n))));
    const at::Tensor rows = c.weight.detach().flatten(1).to(at::kDouble);
    const at::Tensor norms = s_.norm == "l2" ? rows.pow(2).sum(1) : rows.abs().sum(1);
    const at::Tensor order = std::get<1>(norms.sort(/*stable=*/true, 0, /*descending=*/false));
    c.set_keep(at::ones_like(c.keep).index_fill_(0, order.narrow(0, 0, k), 0));
  }
  masking_ = sparsity > 0.0;
  apply();
}

void Pruner::apply() {
  if (!masking_) return;  // before the ramp: every mask is all ones
  torch::NoGradGuard no_grad;
  for (Entry& e : entries_) e.weight.mul_(e.mask);
  for (Channels& c : channels_) {
    for (size_t i = 0; i < c.zeroed.size(); ++i) c.zeroed[i].mul_(c.masks[i]);
  }
}

void Pruner::Channels::set_keep(at::Tensor k) {
  keep = std::move(k);
  masks.clear();
  for (const at::Tensor& t : zeroed) {
    std::vector<int64_t> shape(static_cast<size_t>(t.dim()), 1);
    shape[0] = -1;
    masks.push_back(keep.view(shape));
  }
}

void Pruner::restore_from_weights() {
  torch::NoGradGuard no_grad;
  masking_ = false;
  for (Entry& e : entries_) {
    e.mask = e.weight.detach().ne(0).to(e.weight.scalar_type());
    masking_ = masking_ || e.mask.eq(0).any().item<bool>();
  }
  for (Channels& c : channels_) {
    c.set_keep(c.weight.detach().flatten(1).ne(0).any(1).to(c.weight.scalar_type()));
    masking_ = masking_ || c.keep.eq(0).any().item<bool>();
  }
}

std::vector<Pruner::Layer> Pruner::sparsity() const {
  std::vector<Layer> out;
  for (const Entry& e : entries_) {
    out.push_back({e.name, e.mask.numel(), e.mask.eq(0).sum().item<int64_t>()});
  }
  for (const Channels& c : channels_) {
    out.push_back({c.name, c.keep.numel(), c.keep.eq(0).sum().item<int64_t>()});
  }
  return out;
}

PruneSummary prune_record(const Pruner& pruner, const std::string& structure, int64_t step) {
  PruneSummary p;
  JsonObject layers;
  for (const Pruner::Layer& l : pruner.sparsity()) {
    layers.add(l.name, static_cast<double>(l.pruned) / static_cast<double>(l.numel));
    p.total += l.numel;
    p.pruned += l.pruned;
  }
  p.sparsity = p.total ? static_cast<double>(p.pruned) / static_cast<double>(p.total) : 0.0;
  // structure=channels counts channels: the layers' fractions of them.
  p.unit = structure == "channels" ? "channels" : "weights";
  p.record.add("kind", "prune")
      .add("structure", structure)
      .add("step", step)
      .add("target", pruner.target(step))
      .add("sparsity", p.sparsity)
      .add("pruned", p.pruned)
      .add(p.unit, p.total)
      .add("layers", layers);
  return p;
}

}  // namespace strata::train
