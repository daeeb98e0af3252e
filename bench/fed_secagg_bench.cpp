// Secure aggregation's cost: round time and bytes per client against the
// plain sync round, for N clients per round and neighbourhoods of k.
//
//   build/bin/fed_secagg_bench [ROUNDS] [CLIENTS,...] [K,...]
//   (default 3 10,50,100,200 16; k 0 -- every other client -- is always run)
//
// A real server (sync fedavg, the MLP 784-256-128-10 of 235,146 values, an
// evaluation of 1,000 test images per version) and N edge clients as
// threads with their own gRPC channels on loopback, every client selected
// every round (clients_per_round = N) and submitting a fixed random update
// at once (no local training: what is measured is the protocol). Per row:
// the mean round time (first selection to the last commit, over ROUNDS
// rounds) and each client's protobuf bytes per round up and down for its
// update (the model download, the same in both, is not counted). Run it
// with STRATA_LOG_LEVEL=warn (bench/fed_secagg.sh does).
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <iostream>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "federated/client.h"
#include "federated/server.h"
#include "federated/server_options.h"
#include "federated/service.h"
#include "trainer/cli.h"
#include "trainer/recipe.h"

namespace sf = strata::fed;
namespace st = strata::train;
using Clock = std::chrono::steady_clock;

namespace {

struct Row {
  double round_s = 0;
  double up_kb = 0, down_kb = 0;  // per client and round
  int64_t versions = 0;
};

Row run(int64_t clients, int64_t rounds, bool secagg, int64_t k, const std::string& dir) {
  std::vector<std::string> o{
      "run.dir=" + dir, "model.name=mlp", "data.test_subset=1000", "data.train_subset=1000",
      "federated.mode=sync", "federated.strategy=fedavg",
      "federated.sync.rounds=" + std::to_string(rounds),
      "federated.sync.clients_per_round=" + std::to_string(clients),
      "federated.sync.over_selection=0", "federated.server.progress_every_s=0",
      "federated.server.address=127.0.0.1:0",
      // Every client may wait in a long poll at once.
      "federated.server.max_waiting_updates=" + std::to_string(clients)};
  if (secagg) {
    o.push_back("federated.secagg.enabled=true");
    o.push_back("federated.secagg.neighbours=" + std::to_string(k));
  }
  const st::Recipe recipe = st::parse_recipe("", "fed_secagg_bench", o);
  const st::Registries registries = st::builtin_registries();
  auto server = sf::make_fed_server(recipe, registries);
  auto service = sf::serve(*server);
  const std::string address = strata::str("127.0.0.1:", service->port());
  const int64_t numel = server->layout().numel();
  std::vector<std::string> tokens;
  for (int64_t c = 0; c < clients; ++c) tokens.push_back(server->store().enroll(strata::str("c", c)));
  std::atomic<int64_t> up{0}, down{0};
  std::atomic<bool> stop{false};
  std::optional<Clock::time_point> first;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      sf::EdgeClientOptions eo;
      eo.address = address;
      eo.client_id = strata::str("c", c);
      eo.token = tokens[static_cast<size_t>(c)];
      sf::EdgeClient client(eo);
      at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(c));
      const at::Tensor update = at::randn({numel}, gen) * 0.01;
      const sf::TensorLayout& layout = server->layout();
      int64_t have = 0, done_round = 0;
      while (!stop) {
        const sf::FetchedModel m = client.fetch(have, std::chrono::milliseconds(1000));
        if (m.finished) return;
        have = m.version;
        if (m.round == 0 || m.round == done_round) continue;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (!first) first = Clock::now();
        }
        sf::SubmitResult r;
        if (m.secagg) {
          r = client.submit_secagg(m.round, *m.secagg, update, 10);
        } else {
          sf::UpdateToSend u;
          u.base_version = m.version;
          u.num_samples = 10;
          u.round = m.round;
          u.tensors = layout.unflatten(update);
          r = client.submit(u);
        }
        done_round = m.round;
        up += r.bytes_up;
        down += r.bytes_down;
      }
    });
  }
  server->wait_finished(std::chrono::hours(1));
  const auto end = Clock::now();
  stop = true;
  for (auto& t : threads) t.join();
  service->shutdown();
  Row row;
  row.versions = server->status().version - 1;
  row.round_s = std::chrono::duration<double>(end - *first).count() / static_cast<double>(rounds);
  const double per = static_cast<double>(clients * rounds) * 1024.0;
  row.up_kb = static_cast<double>(up) / per;
  row.down_kb = static_cast<double>(down) / per;
  return row;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  for (const auto& part : strata::split(s, ',')) out.push_back(std::stoll(part));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  return st::run_main("fed_secagg_bench", [&] {
    const int64_t rounds = argc > 1 ? std::stoll(argv[1]) : 3;
    const std::vector<int64_t> ns = parse_list(argc > 2 ? argv[2] : "10,50,100,200");
    const std::vector<int64_t> ks = parse_list(argc > 3 ? argv[3] : "16");
    char tmpl[] = "/tmp/fed_secagg_bench.XXXXXX";
    STRATA_CHECK_T(IoError, ::mkdtemp(tmpl) != nullptr, "cannot make a directory in /tmp");
    const std::string base = tmpl;
    std::cout << "| clients | protocol | round s | x plain | up KiB/client | down KiB/client |\n"
              << "|---|---|---|---|---|---|\n";
    int run_id = 0;
    for (const int64_t n : ns) {
      const auto dir = [&] { return strata::join_path(base, strata::str("r", run_id++)); };
      const Row plain = run(n, rounds, false, 0, dir());
      const auto line = [&](const std::string& what, const Row& r) {
        std::cout << "| " << n << " | " << what << " | " << strata::format_metric(r.round_s)
                  << " | " << strata::format_metric(r.round_s / plain.round_s) << " | "
                  << strata::format_metric(r.up_kb) << " | " << strata::format_metric(r.down_kb)
                  << " |" << (r.versions == rounds ? "" : " (not every round committed)")
                  << std::endl;
      };
      line("plain", plain);
      line("secagg, k = all", run(n, rounds, true, 0, dir()));
      for (const int64_t k : ks) {
        if (k < n - 1) line(strata::str("secagg+, k = ", k), run(n, rounds, true, k, dir()));
      }
    }
    std::filesystem::remove_all(base);
    return 0;
  });
}
