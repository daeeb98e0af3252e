#include "federated/sim.h"

#include "federated/learner.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <atomic>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/logging.h"
#include "core/random.h"
#include "core/strings.h"
#include "federated/edge.h"
#include "federated/partition.h"
#include "federated/server.h"
#include "federated/service.h"

namespace strata::fed {

SimResult run_fedsim(const train::Recipe& recipe, const train::Registries& registries) {
  check_learner_recipe(recipe);
  const auto t0 = std::chrono::steady_clock::now();
  const train::FedSimSection& sim = recipe.federated.sim;
  STRATA_CHECK_T(ConfigError, recipe.federated.server.tls_cert.empty(),
                 "strata-fedsim serves on loopback in plaintext; leave federated.server.tls_* "
                 "empty (TLS is exercised by strata-fedserver and the tests)");
  // One load of the dataset: the clients' shards of its training split,
  // the server's evaluation split.
  ClientShards shards = load_client_shards(recipe, registries);
  const train::LoadedData& data = shards.data;
  // Recipe errors the clients would meet, before anything starts.
  client_drift(recipe, data, 0);
  const auto build_model = [&] {
    return registries.models.get(recipe.model.name, "", "model.name")
        .build(recipe.model, data.shape, train::ModelPart{});
  };
  keep_local_slots(recipe, TensorLayout::of(*build_model()));
  local_dp(recipe);
  train::Recipe server_recipe = recipe;
  server_recipe.federated.server.address = "127.0.0.1:0";
  // Central DP's sampling rate: the simulated population by default.
  if (server_recipe.federated.privacy.population == 0) {
    server_recipe.federated.privacy.population = sim.clients;
  }
  const std::unique_ptr<FedServer> owned =
      make_fed_server(server_recipe, registries, eval_data(data));
  FedServer& server = *owned;
  auto service = serve(server);
  const std::string address = str("127.0.0.1:", service->port());
  const uint64_t seed = static_cast<uint64_t>(recipe.run.seed);
  // Which clients misbehave: a seeded choice of round(fraction x N).
  std::vector<int64_t> order(sim.clients);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(mix_seed(seed, 99));
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t bad = std::llround(sim.malicious_fraction * static_cast<double>(sim.clients));
  std::vector<bool> malicious(sim.clients, false);
  for (int64_t i = 0; i < bad; ++i) malicious[order[i]] = true;
  log_info("fedsim: ", sim.clients, " clients (", sim.partition,
           sim.partition == "dirichlet" ? str(" alpha ", format_double(sim.dirichlet_alpha)) : "",
           "), ", bad, " malicious (", sim.attack, " x", format_double(sim.attack_scale), ")",
           sim.drift == "none" ? std::string()
                               : str(", streams drifting (", sim.drift, ", every ~",
                                     sim.drift_every, " instances of a client, ", sim.concepts,
                                     " concepts)"),
           ", server on ", address);

  Semaphore compute(sim.parallel_clients);
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<std::string> errors;
  int64_t done = 0;  // client threads that returned (finished, failed or out of budget)
  std::vector<EdgeRunStats> stats(static_cast<size_t>(sim.clients));
  std::vector<std::thread> threads;
  std::set<std::string> enrolled;
  for (const auto& c : server.store().clients()) enrolled.insert(c.id);
  for (int64_t c = 0; c < sim.clients; ++c) {
    const std::string id = str("client-", c);
    // A rerun on the same run directory issues its clients new tokens.
    const std::string token =
        enrolled.count(id) ? server.store().rotate(id) : server.store().enroll(id);
    threads.emplace_back([&, c, id, token] {
      try {
        at::set_num_threads(1);
        EdgeClientOptions eo;
        eo.address = address;
        eo.client_id = id;
        eo.token = token;
        eo.max_retries = static_cast<int>(recipe.federated.client.max_retries);
        EdgeClient client(eo);
        auto model = build_model();
        EdgeRunOptions ro;
        ro.recipe = &recipe;
        ro.registries = &registries;
        ro.seed = mix_seed(seed, static_cast<uint64_t>(c), 3);
        ro.attack = malicious[c] ? parse_attack(sim.attack) : Attack::kNone;
        ro.attack_scale = sim.attack_scale;
        ro.compute = &compute;
        ro.stop = &stop;
        ro.drift = client_drift(recipe, data, ro.seed);
        ro.dropout = sim.dropout;
        // Each thread writes only its own client's slot.
        stats[static_cast<size_t>(c)] =
            run_edge(client, model, local_data(data, shards.shards[c]), ro);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        errors.push_back(str(id, ": ", e.what()));
      }
      std::lock_guard<std::mutex> lock(mu);
      ++done;
    });
  }
  // The server decides when the run is over; clients see `finished` on
  // their next fetch. Stop early when no client is left: every one failed,
  // or spent its local privacy budget.
  const auto finish = [&] {
    stop = true;
    for (auto& t : threads) t.join();
    service->shutdown();
  };
  try {
    for (;;) {
      if (server.wait_finished(std::chrono::milliseconds(500))) break;
      std::lock_guard<std::mutex> lock(mu);
      if (done == sim.clients) break;
    }
  } catch (...) {
    finish();
    throw;
  }
  finish();
  for (const auto& e : errors) log_error("fedsim client failed: ", e);
  const ServerStatus s = server.status();
  int64_t out_of_budget = 0;
  for (const EdgeRunStats& st : stats) out_of_budget += st.budget_spent ? 1 : 0;
  STRATA_CHECK_T(Error, s.finished || (errors.empty() && out_of_budget > 0),
                 "fedsim: every client failed before the run finished (",
                 errors.empty() ? "" : errors.front(), ")");
  if (!s.finished) {
    log_warn("fedsim: every client stopped before the server finished (", out_of_budget,
             " spent their local privacy budget, federated.privacy.target_epsilon); the run "
             "ends at version ", s.version);
  }
  SimResult r;
  r.versions = s.version - 1;
  r.test_accuracy = s.last_test_accuracy;
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.run_dir = recipe.run_dir();
  std::vector<double> submitted, instances, epsilon;
  double error_sum = 0.0;
  int64_t learned = 0;
  for (const EdgeRunStats& st : stats) {
    r.accepted += st.accepted;
    r.refused += st.refused;
    submitted.push_back(static_cast<double>(st.submitted));
    epsilon.push_back(st.epsilon);
    r.dropped_out += st.dropped;
    r.max_client_epsilon = std::max(r.max_client_epsilon, st.epsilon);
    instances.push_back(static_cast<double>(st.online_instances));
    r.client_online_error.push_back(st.online_error());
    r.online_instances += st.online_instances;
    if (st.online_instances > 0) {
      error_sum += st.online_error();
      ++learned;
    }
  }
  r.online_error = learned > 0 ? error_sum / static_cast<double>(learned) : 0.0;
  JsonObject clients;
  clients.add("clients", sim.clients).add("submitted", submitted).add("dropped_out", r.dropped_out);
  if (local_dp(recipe)) {
    clients.add("epsilon_max", r.max_client_epsilon)
        .add("delta", recipe.federated.privacy.delta)
        .add("epsilon", epsilon);
  }
  if (r.online_instances > 0) {
    clients.add("online_error_mean", r.online_error)
        .add("online_instances", r.online_instances)
        .add("instances", instances)
        .add("online_error", r.client_online_error);
  }
  atomic_write_file(join_path(r.run_dir, "clients.json"), clients.str() + "\n");
  return r;
}

}  // namespace strata::fed
