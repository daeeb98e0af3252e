#include "federated/edge.h"

#include <ATen/CPUGeneratorImpl.h>

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
  EdgeRunStats st;
  int64_t have = 0;
  at::Tensor global;
  const auto stopped = [&] { return o.stop && o.stop->load(); };
  while (!stopped()) {
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
    const at::Tensor delta = corrupt(lr.delta, o.attack, o.attack_scale,
                                     mix_seed(o.seed, static_cast<uint64_t>(st.submitted), 7));
    UpdateToSend u;
    u.base_version = have;
    u.num_samples = lr.num_samples;
    u.round = m.round;
    u.tensors = layout.unflatten(delta);
    u.encoding = enc;
    const SubmitResult res = client.submit(u);
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
