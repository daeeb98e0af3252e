// strata-fedserver: the federated server.
//
//   strata-fedserver RECIPE.yaml [section.key=value ...]
//       serves until the recipe's rounds/versions are done or SIGINT/SIGTERM;
//       prints "listening on HOST:PORT" first (port 0 in the recipe: chosen)
//   strata-fedserver enroll RECIPE.yaml CLIENT_ID [CLIENT_ID ...]
//       issues a token per client, printed once as "CLIENT_ID TOKEN"
//
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <malloc.h>

#include <csignal>
#include <iostream>

#include "core/error.h"
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
// ingest] in federated/service.cpp). A fixed threshold returns every block
// of 4 MiB and more to the system when freed; fewer arenas bound the rest.
void bound_heap_retention() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_ARENA_MAX, 4);
#endif
}
}  // namespace

int main(int argc, char** argv) {
  return st::run_main("strata-fedserver", [&] {
    if (argc >= 2 && std::string(argv[1]) == "enroll") {
      if (argc < 4) {
        throw strata::UsageError("usage: strata-fedserver enroll RECIPE.yaml CLIENT_ID [CLIENT_ID ...]");
      }
      const st::Recipe recipe = st::load_recipe(argv[2]);
      sf::ServerStore store(recipe.run_dir());
      for (int i = 3; i < argc; ++i) std::cout << argv[i] << " " << store.enroll(argv[i]) << "\n";
      return 0;
    }
    const auto loaded = st::recipe_or_print(
        st::parse_command_line(argc, argv), "strata-fedserver",
        "Serves the federated protocol until the recipe's rounds/versions are done.\n"
        "  strata-fedserver enroll RECIPE.yaml CLIENT_ID...   issues client tokens");
    if (!loaded) return 0;
    const st::Recipe& recipe = *loaded;
    bound_heap_retention();
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    sf::FedServer server(recipe, st::builtin_registries());
    auto service = sf::serve(server);
    const std::string& a = recipe.federated.server.address;
    std::cout << "listening on " << a.substr(0, a.rfind(':')) << ":" << service->port()
              << std::endl;
    while (!server.wait_finished(std::chrono::milliseconds(200))) {
      if (g_signal != 0) {
        std::cerr << "strata-fedserver: signal " << g_signal << ", stopping\n";
        break;
      }
    }
    service->shutdown();
    const sf::ServerStatus s = server.status();
    std::cout << "version " << s.version << ", " << s.accepted << " updates accepted, "
              << s.rejected << " rejected\n";
    return 0;
  });
}
