// strata-fedserver: the federated server, and the operator's commands for it.
//
//   strata-fedserver RECIPE.yaml [section.key=value ...]
//       serves until the recipe's rounds/versions are done or SIGINT/SIGTERM;
//       prints "listening on HOST:PORT" first (port 0 in the recipe: chosen)
//       and writes RUN_DIR/server.address and RUN_DIR/operator.token
//   strata-fedserver enroll RECIPE.yaml [overrides] CLIENT_ID... [--out DIR]
//   strata-fedserver rotate RECIPE.yaml [overrides] CLIENT_ID... [--out DIR]
//   strata-fedserver revoke RECIPE.yaml [overrides] CLIENT_ID...
//   strata-fedserver clients list RECIPE.yaml [overrides]
//   strata-fedserver status RECIPE.yaml [overrides] [--address HOST:PORT]
//   strata-fedserver privacy --rate Q --rounds R [--delta D] (--noise Z | --epsilon E)
//       privacy accounting of DP-FedAvg (federated/accountant.h): the epsilon
//       R rounds at sampling rate Q with noise multiplier Z spend, or the
//       least noise multiplier that keeps R rounds within epsilon E
//
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <malloc.h>
#include <sys/stat.h>

#include <cmath>
#include <csignal>
#include <iomanip>
#include <iostream>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "federated/accountant.h"
#include "federated/client.h"
#include "federated/server.h"
#include "federated/server_store.h"
#include "federated/service.h"
#include "trainer/cli.h"

namespace st = strata::train;
namespace sf = strata::fed;

namespace {
volatile std::sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

// Updates (MiBs each) are received on whichever gRPC thread runs the call.
// glibc would serve them from per-thread arenas once its dynamic mmap
// threshold has risen, and keep the freed blocks there, so the heap would
// grow with the number of threads that ever received one (Note [Bounded
// ingest] in federated/service_impl.h). A fixed threshold returns every block
// of 4 MiB and more to the system when freed; fewer arenas bound the rest.
void bound_heap_retention() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_ARENA_MAX, 4);
#endif
}

std::string address_file(const st::Recipe& r) { return strata::join_path(r.run_dir(), "server.address"); }

int serve(const st::Recipe& recipe) {
  bound_heap_retention();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const st::Registries registries = st::builtin_registries();
  const std::unique_ptr<sf::FedServer> owned = sf::make_fed_server(recipe, registries);
  sf::FedServer& server = *owned;
  auto service = sf::serve(server, server.store().operator_token());
  const std::string& a = recipe.federated.server.address;
  const std::string bound = a.substr(0, a.rfind(':')) + ":" + std::to_string(service->port());
  strata::atomic_write_file(address_file(recipe), bound + "\n");
  std::cout << "listening on " << bound << std::endl;
  bool finished = false;
  while (!(finished = server.wait_finished(std::chrono::milliseconds(200)))) {
    if (g_signal != 0) {
      std::cerr << "strata-fedserver: signal " << g_signal << ", stopping\n";
      break;
    }
  }
  // Clients that fetch in the next moment learn that training finished
  // (and stop) instead of finding no server.
  for (int i = 0; finished && i < 10 && g_signal == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  service->shutdown();
  const sf::ServerStatus s = server.status();
  std::cout << "version " << s.version << ", " << s.accepted << " updates accepted, "
            << s.rejected << " rejected\n";
  return 0;
}

// Tokens go to stdout as "CLIENT_ID TOKEN" lines, or with --out into
// DIR/CLIENT_ID.token (the token alone, mode 0600: what strata-edge
// --token-file reads).
void hand_out(const std::string& id, const std::string& token, const std::string& out_dir) {
  if (out_dir.empty()) {
    std::cout << id << " " << token << "\n";
    return;
  }
  strata::make_dirs(out_dir);
  const std::string path = strata::join_path(out_dir, id + ".token");
  const mode_t old = ::umask(077);
  strata::atomic_write_file(path, token + "\n");
  ::umask(old);
  std::cout << "wrote " << path << "\n";
}

std::vector<std::string> client_ids(const st::RecipeArgs& a, const char* command) {
  const auto ids = a.rest();
  if (ids.empty()) {
    throw strata::UsageError(strata::str(command, ": name at least one CLIENT_ID after the recipe "
                                         "(see strata-fedserver ", command, " --help)"));
  }
  return ids;
}

int status(const st::Recipe& recipe, std::string address, std::string tls_ca) {
  sf::ServerStore store(recipe.run_dir());
  const std::string token_path = store.operator_token_path();
  if (!strata::path_exists(token_path)) {
    throw strata::IoError(strata::str(token_path, " does not exist: no server has run on this "
                                      "run directory (run.dir) yet"));
  }
  if (address.empty()) {
    const std::string f = address_file(recipe);
    if (!strata::path_exists(f)) {
      throw strata::IoError(strata::str(f, " does not exist: pass --address HOST:PORT"));
    }
    address = strata::read_file(f);
    while (!address.empty() && (address.back() == '\n' || address.back() == ' ')) address.pop_back();
  }
  sf::EdgeClientOptions o;
  o.address = address;
  o.token = store.operator_token();
  o.tls_ca = tls_ca.empty() ? recipe.federated.server.tls_ca : tls_ca;
  o.max_retries = 2;
  o.rpc_timeout = std::chrono::milliseconds(10000);
  sf::EdgeClient client(o);
  std::cout << "server " << address << "\n" << client.status();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return st::run_main("strata-fedserver", [&] {
    auto app = st::make_app(
        "strata-fedserver",
        "The federated server: serves the protocol of federated/proto/strata_fed.proto for the "
        "run a recipe describes, until its rounds/versions are done or SIGINT/SIGTERM, and "
        "manages the run's clients (the subcommands).");
    st::RecipeArgs serve_args;
    serve_args.example = "strata-fedserver recipes/fed_fmnist_sync.yaml";
    st::add_recipe_args(*app, serve_args);

    st::RecipeArgs enroll_args, rotate_args, revoke_args, list_args, status_args;
    std::string enroll_out, rotate_out, address, tls_ca;
    auto* enroll = app->add_subcommand(
        "enroll", "issue each new client a token: 'CLIENT_ID TOKEN' lines on stdout, or with --out "
                  "one DIR/CLIENT_ID.token file each (mode 0600, what strata-edge --token-file "
                  "reads); an enrolled id is refused (see rotate)");
    st::add_recipe_args(*enroll, enroll_args, "CLIENT_ID...", false);
    enroll->add_option("--out", enroll_out, "directory for the token files")->type_name("DIR");
    auto* rotate = app->add_subcommand(
        "rotate", "issue enrolled clients new tokens (a revoked client is reinstated); the old "
                  "tokens stop working at once");
    st::add_recipe_args(*rotate, rotate_args, "CLIENT_ID...", false);
    rotate->add_option("--out", rotate_out, "directory for the token files")->type_name("DIR");
    auto* revoke = app->add_subcommand(
        "revoke", "revoke clients' tokens at once (a running server refuses them from the next "
                  "call); their updates stay in the ledger");
    st::add_recipe_args(*revoke, revoke_args, "CLIENT_ID...", false);
    auto* clients = app->add_subcommand("clients", "the run's clients");
    clients->require_subcommand(1);
    auto* list = clients->add_subcommand("list", "list enrolled clients: id, state, enrolled at, "
                                                 "updates in the ledger, last sequence");
    st::add_recipe_args(*list, list_args, "", false);
    auto* stat = app->add_subcommand(
        "status", "print a running server's status (version, round or buffer fill, clients, "
                  "accepted and refused updates by reason), authenticated with the run's "
                  "RUN_DIR/operator.token");
    st::add_recipe_args(*stat, status_args, "", false);
    stat->add_option("--address", address,
                     "the server (default: what it wrote to RUN_DIR/server.address)")
        ->type_name("HOST:PORT");
    stat->add_option("--tls-ca", tls_ca, "CA certificate of a TLS server (default: "
                                         "federated.server.tls_ca)")
        ->type_name("PEM");
    double rate = 0, delta = 1e-5, noise = -1, epsilon = -1;
    int64_t rounds = 0;
    auto* privacy = app->add_subcommand(
        "privacy", "privacy accounting of client-level DP-FedAvg (the sampled Gaussian "
                   "mechanism, Renyi DP, federated/accountant.h): the epsilon --rounds rounds "
                   "at --rate with --noise spend, or the least noise multiplier that keeps them "
                   "within --epsilon");
    privacy->add_option("--rate", rate, "the share of the population taking part in a round "
                                        "(clients per round / population), in (0, 1]")
        ->required()
        ->check(CLI::Range(1e-12, 1.0))
        ->type_name("Q");
    privacy->add_option("--rounds", rounds, "rounds (aggregations)")
        ->required()
        ->check(CLI::PositiveNumber)
        ->type_name("R");
    privacy->add_option("--delta", delta, "delta of (epsilon, delta), in (0, 1) (default 1e-5)")
        ->check(CLI::Range(1e-300, 1.0 - 1e-12))
        ->type_name("D");
    privacy->add_option("--noise", noise, "noise multiplier z: the noise on the sum of the "
                                          "updates clipped to C has std z C")
        ->check(CLI::NonNegativeNumber)
        ->type_name("Z");
    privacy->add_option("--epsilon", epsilon, "the budget to plan the noise for")
        ->check(CLI::PositiveNumber)
        ->type_name("E");
    if (!st::parse_args(*app, argc, argv)) return 0;

    if (privacy->parsed()) {
      if ((noise < 0) == (epsilon < 0)) {
        throw strata::UsageError("strata-fedserver privacy takes one of --noise or --epsilon "
                                 "(see strata-fedserver privacy --help)");
      }
      if (noise >= 0) {
        sf::RdpAccountant a;
        a.compose(rate, noise, rounds);
        const sf::PrivacySpent p = a.spent(delta);
        std::cout << "epsilon " << strata::format_metric(p.epsilon) << " at delta "
                  << strata::format_double(delta) << " after " << rounds << " rounds at rate "
                  << strata::format_double(rate) << " with noise multiplier "
                  << strata::format_double(noise) << " (Renyi order "
                  << strata::format_double(p.order) << ")\n";
      } else {
        // Rounded up to 4 decimals: the printed multiplier keeps the budget.
        const double z =
            std::ceil(sf::noise_multiplier_for(epsilon, delta, rate, rounds) * 1e4) / 1e4;
        if (std::isinf(z)) {
          std::cout << "no noise multiplier up to 10000 keeps " << rounds << " rounds at rate "
                    << strata::format_double(rate) << " within epsilon "
                    << strata::format_double(epsilon) << "\n";
          return 1;
        }
        sf::RdpAccountant a;
        a.compose(rate, z, rounds);
        std::cout << "noise multiplier " << strata::format_double(z) << " keeps " << rounds
                  << " rounds at rate " << strata::format_double(rate) << " within epsilon "
                  << strata::format_double(epsilon) << " at delta " << strata::format_double(delta)
                  << " (spends " << strata::format_metric(a.spent(delta).epsilon)
                  << "); the average of m clipped updates then gets noise of std z C / m\n";
      }
      return 0;
    }

    if (enroll->parsed() || rotate->parsed()) {
      const bool is_enroll = enroll->parsed();
      const st::RecipeArgs& a = is_enroll ? enroll_args : rotate_args;
      const auto ids = client_ids(a, is_enroll ? "enroll" : "rotate");
      const st::Recipe recipe = *st::recipe_or_print(a, /*allow_rest=*/true);
      sf::ServerStore store(recipe.run_dir());
      for (const auto& id : ids) {
        hand_out(id, is_enroll ? store.enroll(id) : store.rotate(id),
                 is_enroll ? enroll_out : rotate_out);
      }
      return 0;
    }
    if (revoke->parsed()) {
      const auto ids = client_ids(revoke_args, "revoke");
      const st::Recipe recipe = *st::recipe_or_print(revoke_args, true);
      sf::ServerStore store(recipe.run_dir());
      for (const auto& id : ids) {
        store.revoke(id);
        std::cout << "revoked " << id << "\n";
      }
      return 0;
    }
    if (list->parsed()) {
      const st::Recipe recipe = *st::recipe_or_print(list_args);
      sf::ServerStore store(recipe.run_dir());
      const auto all = store.clients();
      std::cout << std::left << std::setw(24) << "client" << std::setw(9) << "state"
                << std::setw(22) << "enrolled (UTC)" << std::setw(9) << "updates"
                << "last sequence\n";
      for (const auto& c : all) {
        std::cout << std::setw(24) << c.id << std::setw(9) << (c.revoked ? "revoked" : "active")
                  << std::setw(22) << c.enrolled_at << std::setw(9) << c.updates
                  << c.last_sequence << "\n";
      }
      std::cout << all.size() << " client(s)\n";
      return 0;
    }
    if (stat->parsed()) {
      return status(*st::recipe_or_print(status_args), address, tls_ca);
    }
    const auto loaded = st::recipe_or_print(serve_args);
    if (!loaded) return 0;
    return serve(*loaded);
  });
}
