#include "federated/edge.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <optional>

#include "core/error.h"
#include "core/logging.h"
#include "core/random.h"
#include "core/strings.h"

namespace strata::fed {
namespace {

at::Tensor corrupt(const at::Tensor& delta, Attack a, double scale, uint64_t seed) {
  switch (a) {
    case Attack::kNone: return delta;
    case Attack::kScaled: return delta * scale;
    case Attack::kSignFlip: return delta * -scale;
    case Attack::kRandom: {
      at::Generator gen = at::detail::createCPUGenerator(seed);
      const double sd = delta.std().item<double>();
      return at::randn(delta.sizes(), gen, at::TensorOptions().dtype(at::kFloat)) * (scale * sd);
    }
  }
  return delta;
}

struct ComputeSlot {
  explicit ComputeSlot(Semaphore* s) : s_(s) { if (s_) s_->acquire(); }
  ~ComputeSlot() { if (s_) s_->release(); }
  Semaphore* s_;
};

}  // namespace

at::Tensor clip_encoded(const at::Tensor& delta, double c, const TensorLayout& layout,
                        const EncodeOptions& enc) {
  at::Tensor out = delta.clone();
  clip_l2_(out, c);
  if (enc.encoding == Encoding::kFp32) return out;
  double sq = 0;
  for (const auto& [name, t] : layout.unflatten(out)) {
    sq += decode(encode(name, t, enc)).square().sum().item<double>();
  }
  const double norm = std::sqrt(sq);
  if (norm > c) out.mul_(c / norm);
  return out;
}

std::optional<LocalDp> local_dp(const train::Recipe& recipe) {
  const train::FedPrivacySection& p = recipe.federated.privacy;
  if (p.mode != "local") return std::nullopt;
  STRATA_CHECK_T(ConfigError, p.noise_multiplier > 0,
                 recipe.where("federated.privacy.noise_multiplier"),
                 "federated.privacy.mode=local adds noise of std noise_multiplier x clip_norm "
                 "to every update a client sends; a noise multiplier of 0 would send the "
                 "clipped update as it is (no privacy): set it above 0, or mode: none");
  STRATA_CHECK_T(ConfigError, !p.adaptive_clip, recipe.where("federated.privacy.adaptive_clip"),
                 "federated.privacy.mode=local clips to a fixed clip_norm (adaptive clipping "
                 "needs the server to see which updates were clipped); set adaptive_clip: false");
  LocalDp dp(p.clip_norm, p.noise_multiplier, p.target_epsilon, p.delta);
  STRATA_CHECK_T(ConfigError, dp.can_release(), recipe.where("federated.privacy.target_epsilon"),
                 "federated.privacy.target_epsilon ", format_double(p.target_epsilon),
                 " does not allow one locally private update (one spends ",
                 format_double(dp.epsilon_after_next()), " at noise_multiplier ",
                 format_double(p.noise_multiplier), " and delta ", format_double(p.delta),
                 "); raise the noise multiplier or the budget");
  return dp;
}

Attack parse_attack(const std::string& name) {
  if (name == "scaled") return Attack::kScaled;
  if (name == "sign_flip") return Attack::kSignFlip;
  if (name == "random") return Attack::kRandom;
  if (name == "none") return Attack::kNone;
  throw ConfigError(str("unknown attack '", name, "'; valid: scaled, sign_flip, random"));
}

EdgeRunStats run_edge(EdgeClient& client, std::shared_ptr<train::Model> model,
                      const LocalData& data, const EdgeRunOptions& o) {
  STRATA_INTERNAL_ASSERT(o.recipe != nullptr && o.registries != nullptr);
  const train::Recipe& r = *o.recipe;
  Learner learner(r, *o.registries, std::move(model));
  const TensorLayout& layout = learner.layout();
  SampleStream stream(data, mix_seed(o.seed, 1), o.drift);
  EncodeOptions enc{parse_encoding(r.federated.client.encoding), r.federated.client.topk_fraction};
  std::optional<LocalDp> ldp = local_dp(r);
  EdgeRunStats st;
  int64_t have = 0;
  at::Tensor global;
  const auto stopped = [&] { return o.stop && o.stop->load(); };
  while (!stopped()) {
    if (ldp && !ldp->can_release()) {
      st.budget_spent = true;
      if (o.report) {
        log_info(o.name, ": local privacy budget spent (epsilon ", format_metric(ldp->epsilon()),
                 " after ", ldp->releases(), " updates; one more would reach ",
                 format_metric(ldp->epsilon_after_next()),
                 " > federated.privacy.target_epsilon); stopping");
      }
      break;
    }
    const bool async = r.federated.mode == "async";
    // Async: a device learns when it gets its turn, from the newest model
    // (fetched inside the turn). Sync: wait to be selected (long poll),
    // then take a turn to train.
    std::optional<ComputeSlot> slot;
    if (async) slot.emplace(o.compute);
    if (stopped()) break;
    FetchedModel m = client.fetch(have, std::chrono::milliseconds(async ? 0 : 2000));
    if (o.report && have == 0) {
      log_info(o.name, ": connected; model version ", m.version, " (", m.mode, " mode)",
               async ? "" : ", waiting to be selected for a round");
    }
    if (m.finished) {
      if (o.report) log_info(o.name, ": the server says training has finished");
      break;
    }
    if (m.changed) {
      try {
        global = layout.from_named(m.tensors);
      } catch (const DataError& e) {
        throw DataError(str("the server's model does not match this client's model.name=",
                            r.model.name, ": ", e.what()));
      }
      have = m.version;
    }
    if (!global.defined() || (!async && m.round == 0)) continue;  // not selected: poll again
    if (!async) slot.emplace(o.compute);
    if (stopped()) break;
    const LocalResult lr =
        async ? learner.learn_online(global, stream,
                                     std::min(r.federated.async.samples_per_update, data.size()),
                                     m.proximal_mu)
              : learner.train_epochs(global, data, m.local_epochs, m.round, o.seed,
                                     m.proximal_mu);
    slot.reset();
    // Privacy first (what an honest client does before its update leaves
    // the device), then a simulated attacker's corruption.
    at::Tensor honest = lr.delta;
    if (ldp) {
      honest = ldp->release(honest);
      st.epsilon = ldp->epsilon();
    } else if (m.clip_norm > 0) {
      honest = m.secagg ? clip_encoded(honest, m.clip_norm, layout, {Encoding::kFp32})
                        : clip_encoded(honest, m.clip_norm, layout, enc);
    }
    const at::Tensor delta = corrupt(honest, o.attack, o.attack_scale,
                                     mix_seed(o.seed, static_cast<uint64_t>(st.submitted), 7));
    SubmitResult res;
    if (m.secagg) {
      // The round's masked sum (the encoding is the ring's, not the recipe's).
      Rng r(mix_seed(o.seed, static_cast<uint64_t>(st.submitted), 0x44524f50));
      const bool drop =
          o.dropout > 0 && static_cast<double>(r.next() >> 11) * 0x1.0p-53 < o.dropout;
      res = client.submit_secagg(m.round, *m.secagg, delta, lr.num_samples, drop);
      if (drop) st.dropped += 1;
    } else {
      UpdateToSend u;
      u.base_version = have;
      u.num_samples = lr.num_samples;
      u.round = m.round;
      u.tensors = layout.unflatten(delta);
      u.encoding = enc;
      res = client.submit(u);
    }
    ++st.submitted;
    st.samples += lr.num_samples;
    st.online_instances += lr.online_instances;
    st.online_errors += lr.online_errors;
    if (res.accepted) {
      ++st.accepted;
    } else {
      ++st.refused;
      st.last_refusal = res.code + ": " + res.reason;
      log_debug("update refused: ", st.last_refusal);
    }
    if (o.report) {
      log_info(o.name, ": ", async ? "" : str("round ", m.round, ", "), "base version ", have,
               ": trained on ", lr.num_samples, " samples (mean loss ",
               format_metric(lr.mean_loss),
               lr.online_instances > 0
                   ? str(", online error ",
                         format_metric(lr.online_errors /
                                       static_cast<double>(lr.online_instances)),
                         ", ", format_metric(st.online_error()), " so far")
                   : std::string(),
               ldp ? str(", local DP epsilon ", format_metric(ldp->epsilon()), " so far")
                   : std::string(),
               "); update ",
               res.accepted ? str("accepted (server at version ", res.current_version,
                                  res.duplicate ? ", a retry of an acknowledged update" : "",
                                  ")")
                            : str("refused: ", st.last_refusal),
               "; ", st.accepted, " accepted so far");
    }
  }
  return st;
}

}  // namespace strata::fed
