// strata-edge: one edge client learning from its shard of the training set.
//
//   strata-edge RECIPE.yaml --server HOST:PORT --client ID --token-file FILE
//               [--shard I] [section.key=value ...]
//
// The shard is part I of the recipe's federated.sim partition (clients,
// partition, dirichlet_alpha, run.seed), so N processes with I = 0..N-1
// split the data like strata-fedsim's N threads. TLS: federated.server.tls_ca.
//
//   strata-edge infer MODEL INPUT... [--labels IDX] [--top K] [--batch N]
//                     [--limit N] [--threads N] [--quiet]
//
// runs a model strata-export wrote (--format strata-int8, or torchscript:
// trainer/edge_model.h) on images -- PNG, JPEG, BMP or PGM files of the
// model's size, or IDX image files (all their images) -- without a recipe,
// MPI or the training data, and prints each image's most probable classes
// (with --labels, the IDX labels of an IDX input: the accuracy).
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <ATen/Parallel.h>
#if STRATA_HAVE_STB
#include <stb_image.h>
#endif

#include <iomanip>
#include <chrono>
#include <iostream>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/random.h"
#include "core/strings.h"
#include "federated/edge.h"
#include "federated/learner.h"
#include "federated/partition.h"
#include "trainer/cli.h"
#include "trainer/data/idx.h"
#include "trainer/edge_model.h"
#include "trainer/trainer.h"

namespace st = strata::train;
namespace sf = strata::fed;

namespace {

// The token in `path`: the file strata-fedserver enroll --out writes (the
// token alone), or a line "CLIENT_ID TOKEN" of enroll's standard output.
std::string read_token(const std::string& path, const std::string& client) {
  const std::vector<std::string> words = [&] {
    std::vector<std::string> w;
    for (const auto& part : strata::split(strata::read_file(path), '\n')) {
      for (const auto& x : strata::split(part, ' ')) {
        if (!x.empty() && x != "\r") w.push_back(x);
      }
    }
    return w;
  }();
  if (words.size() == 1) return words[0];
  if (words.size() == 2 && words[0] == client) return words[1];
  if (words.size() == 2) {
    throw strata::UsageError(strata::str("--token-file ", path, " holds the token of client ",
                                         strata::quote(words[0]), ", not of --client ", client));
  }
  throw strata::UsageError(strata::str("--token-file ", path, " does not hold one token (write it "
                                       "with strata-fedserver enroll RECIPE ID --out DIR)"));
}

// One input file's images as [N, C, H, W] uint8: an IDX image file (all
// of its images, at most `limit`), or one image file (stb_image: PNG, JPEG,
// BMP, PGM, ...) of the model's size, read with the model's channels.
at::Tensor read_images(const std::string& path, const std::vector<int64_t>& shape, int64_t limit) {
  STRATA_CHECK_T(UsageError, strata::path_exists(path), "input '", path,
                 "' does not exist");
  STRATA_CHECK_T(UsageError, shape.size() == 3, "the model takes inputs of ",
                 shape.size(), " dimensions, not images [C, H, W]");
  const int64_t c = shape[0], h = shape[1], w = shape[2];
  const std::string data = strata::read_file(path);
  const bool idx = data.size() >= 4 && data[0] == 0 && data[1] == 0 && data[2] == 8;
  const bool gzip = data.size() >= 2 && static_cast<uint8_t>(data[0]) == 0x1f &&
                    static_cast<uint8_t>(data[1]) == 0x8b;
  if (idx || gzip) {
    const st::IdxArray a = st::read_idx(path);
    const bool fits = (a.dims.size() == 3 && c == 1 && a.dims[1] == h && a.dims[2] == w) ||
                      (a.dims.size() == 4 && a.dims[1] == c && a.dims[2] == h && a.dims[3] == w);
    STRATA_CHECK_T(UsageError, fits, "'", path, "' holds IDX images of shape ",
                   c10::IntArrayRef(a.dims), "; the model takes [", c, ", ", h, ", ", w, "]");
    const int64_t n = limit > 0 ? std::min(limit, a.dims[0]) : a.dims[0];
    return at::from_blob(const_cast<uint8_t*>(a.data.data()), {n, c, h, w}, at::kByte).clone();
  }
#if STRATA_HAVE_STB
  int iw = 0, ih = 0, ic = 0;
  uint8_t* pixels = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(data.data()),
                                          static_cast<int>(data.size()), &iw, &ih, &ic,
                                          static_cast<int>(c));
  STRATA_CHECK_T(UsageError, pixels != nullptr, "'", path, "' is neither an IDX file "
                 "nor an image stb_image reads (PNG, JPEG, BMP, PGM/PPM, ...): ",
                 stbi_failure_reason());
  const at::Tensor hwc = at::from_blob(pixels, {ih, iw, c}, at::kByte).clone();
  stbi_image_free(pixels);
  STRATA_CHECK_T(UsageError, ih == h && iw == w, "'", path, "' is ", iw, "x", ih,
                 " pixels; the model takes ", w, "x", h, " (resize it first)");
  return hwc.permute({2, 0, 1}).unsqueeze(0).contiguous();
#else
  throw strata::UsageError(strata::str("'", path, "' is not an IDX file, and this strata-edge "
                                       "was built without stb_image (libstb-dev) for image "
                                       "files; install it (launch/setup does) and rebuild"));
#endif
}

// strata-edge infer: an exported model run on images.
int infer_main(int argc, char** argv) {
  auto app = st::make_app("strata-edge infer",
                          "Runs a model strata-export wrote (--format strata-int8, or "
                          "torchscript) on images and prints each one's most probable classes.");
  std::string model_path, labels_path;
  std::vector<std::string> inputs;
  int64_t top = 1, batch = 64, limit = 0;
  int threads = 1;
  bool quiet = false;
  app->add_option("MODEL", model_path, "the exported model (RUN_DIR/model.strata-int8)")
      ->required();
  app->add_option("INPUT", inputs,
                  "images of the model's size (PNG, JPEG, BMP, PGM) or IDX image files")
      ->required();
  app->add_option("--labels", labels_path,
                  "IDX labels of the (one) IDX input: prints the accuracy")
      ->type_name("IDX");
  app->add_option("--top", top, "classes to print per image")->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app->add_option("--batch", batch, "images per forward")->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app->add_option("--limit", limit, "at most this many images of an IDX input (0: all)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--threads", threads, "intra-op threads")->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app->add_flag("--quiet", quiet, "no line per image: only the summary");
  std::string server, client, token_file, tls_ca;
  app->add_option("--server", server,
                  "fetch the current global model from this federated server (which publishes "
                  "strata-int8: federated.server.publish) into MODEL first")
      ->type_name("HOST:PORT");
  app->add_option("--client", client, "--server: this client's id, as enrolled")->type_name("ID");
  app->add_option("--token-file", token_file, "--server: the client's token file")
      ->type_name("FILE")
      ->check(CLI::ExistingFile);
  app->add_option("--tls-ca", tls_ca, "--server: CA certificate (PEM) of a TLS server")
      ->type_name("FILE")
      ->check(CLI::ExistingFile);
  if (!st::parse_args(*app, argc, argv)) return 0;
  at::set_num_threads(threads);
  if (!server.empty()) {
    STRATA_CHECK_T(UsageError, !client.empty() && !token_file.empty(),
                   "--server needs --client and --token-file");
    sf::EdgeClientOptions eo;
    eo.address = server;
    eo.client_id = client;
    eo.token = read_token(token_file, client);
    eo.tls_ca = tls_ca;
    sf::EdgeClient edge(eo);
    int64_t version = 0;
    const std::string bytes = edge.fetch_package(&version);
    strata::atomic_write_file(model_path, bytes);
    std::cout << "fetched version " << version << " from " << server << ": " << bytes.size()
              << " bytes into " << model_path << "\n";
  }
  st::EdgeModel model(model_path);
  STRATA_CHECK_T(UsageError, model.takes_pixels(), model_path,
                 " is not an image model; strata-edge infer runs image classifiers");
  std::vector<int64_t> labels;
  if (!labels_path.empty()) {
    STRATA_CHECK_T(UsageError, inputs.size() == 1, "--labels goes with one IDX input, "
                   "not ", inputs.size(), " inputs");
    const st::IdxArray a = st::read_idx(labels_path);
    STRATA_CHECK_T(UsageError, a.dims.size() == 1, "--labels '", labels_path,
                   "' is not a 1-D IDX label file");
    labels.assign(a.data.begin(), a.data.end());
  }
  const auto& m = model.manifest();
  std::cout << model_path << ": " << m["model"].value("name", std::string("?")) << ", "
            << m.value("format", std::string("?"))
            << (m.contains("int8") ? " (" + m["int8"].value("scheme", std::string()) + " int8, " +
                                         m["int8"].value("engine", std::string()) + ")"
                                   : std::string(" (fp32)"))
            << "\n";
  int64_t seen = 0, correct = 0;
  double ms = 0;
  for (const std::string& input : inputs) {
    const at::Tensor images = read_images(input, model.input_shape(), limit);
    const int64_t n = images.size(0);
    STRATA_CHECK_T(UsageError, labels.empty() || static_cast<int64_t>(labels.size()) >= n,
                   "--labels '", labels_path, "' has ", labels.size(), " labels for ", n,
                   " images");
    for (int64_t i = 0; i < n; i += batch) {
      const int64_t b = std::min(batch, n - i);
      const at::Tensor x = model.from_pixels(images.narrow(0, i, b));
      const auto t0 = std::chrono::steady_clock::now();
      const auto predictions = model.classify(x, top);
      ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      for (int64_t j = 0; j < b; ++j) {
        const auto& p = predictions[static_cast<size_t>(j)];
        if (!labels.empty()) correct += p[0].label == labels[static_cast<size_t>(i + j)];
        if (quiet) continue;
        std::cout << input;
        if (n > 1 || images.size(0) != 1) std::cout << "[" << i + j << "]";
        std::cout << ":";
        for (const st::Prediction& k : p) {
          std::cout << " " << k.label << " (" << std::fixed << std::setprecision(4)
                    << k.probability << ")";
        }
        std::cout.unsetf(std::ios::floatfield);
        std::cout << "\n";
      }
    }
    seen += n;
  }
  std::cout << seen << " image" << (seen == 1 ? "" : "s") << " in "
            << strata::format_metric(ms) << " ms of forward (" << threads << " thread"
            << (threads == 1 ? "" : "s") << ", batches of " << batch << ")";
  if (!labels.empty()) {
    std::cout << "; accuracy " << strata::format_metric(static_cast<double>(correct) /
                                                        static_cast<double>(seen))
              << " (" << correct << " of " << seen << ", labels " << labels_path << ")";
  }
  std::cout << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "infer") {
    return st::run_main("strata-edge infer", [&] { return infer_main(argc - 1, argv + 1); });
  }
  return st::run_main("strata-edge", [&] {
    auto app = st::make_app(
        "strata-edge",
        "One edge client: learns from its shard of the training set (part --shard of the "
        "recipe's federated.sim partition) and submits updates to a federated server until it "
        "says training has finished. 'strata-edge infer MODEL INPUT...' runs an exported model "
        "(see strata-edge infer --help).");
    st::RecipeArgs args;
    args.example =
        "strata-edge recipes/fed_fmnist_sync.yaml --server 127.0.0.1:7070 --client edge-0 "
        "--token-file tokens/edge-0.token";
    st::add_recipe_args(*app, args);
    std::string server, client, token_file;
    int64_t shard = 0;
    app->add_option("--server", server, "the server")->type_name("HOST:PORT");
    app->add_option("--client", client, "this client's id, as enrolled")->type_name("ID");
    app->add_option("--token-file", token_file,
                    "the client's token (strata-fedserver enroll RECIPE ID --out DIR writes "
                    "DIR/ID.token)")
        ->type_name("FILE")
        ->check(CLI::ExistingFile);
    app->add_option("--shard", shard, "which part of federated.sim's partition to learn from, "
                                      "0 .. federated.sim.clients - 1")
        ->type_name("I");
    if (!st::parse_args(*app, argc, argv)) return 0;
    const auto loaded = st::recipe_or_print(args);
    if (!loaded) return 0;
    const st::Recipe& recipe = *loaded;
    strata::fed::check_learner_recipe(recipe);
    if (server.empty() || client.empty() || token_file.empty()) {
      throw strata::UsageError("--server, --client and --token-file are required (see "
                               "strata-edge --help)");
    }
    const auto& sim = recipe.federated.sim;
    if (shard < 0 || shard >= sim.clients) {
      throw strata::UsageError(strata::str("--shard ", shard, " is outside [0, ", sim.clients,
                                           ") (federated.sim.clients)"));
    }
    sf::EdgeClientOptions eo;
    eo.address = server;
    eo.client_id = client;
    eo.token = read_token(token_file, client);
    eo.tls_ca = recipe.federated.server.tls_ca;
    eo.max_retries = static_cast<int>(recipe.federated.client.max_retries);
    at::set_num_threads(recipe.run.threads > 0 ? static_cast<int>(recipe.run.threads) : 1);
    const uint64_t seed = static_cast<uint64_t>(recipe.run.seed);
    const st::Registries registries = st::builtin_registries();
    const sf::ClientShards shards = sf::load_client_shards(recipe, registries);
    const std::vector<int64_t>& mine = shards.shards[static_cast<size_t>(shard)];
    sf::EdgeClient edge(eo);
    auto model = registries.models.get(recipe.model.name, recipe.where("model.name"),
                                       "model.name")
                     .build(recipe.model, shards.data.shape, st::ModelPart{});
    sf::EdgeRunOptions ro;
    ro.recipe = &recipe;
    ro.registries = &registries;
    ro.seed = strata::mix_seed(seed, static_cast<uint64_t>(shard), 3);
    ro.drift = sf::client_drift(recipe, shards.data, ro.seed);
    ro.name = client;
    ro.report = true;
    strata::log_info(client, ": shard ", shard, " of ", sim.clients, " (", mine.size(),
                     " samples); server ", server, eo.tls_ca.empty() ? " (plaintext)" : " (TLS)");
    const auto stats = sf::run_edge(edge, model, sf::local_data(shards.data, mine), ro);
    std::cout << client << ": " << stats.accepted << " updates accepted, " << stats.refused
              << " refused, " << stats.samples << " samples";
    if (stats.online_instances > 0) {
      std::cout << "; online (prequential) error " << strata::format_metric(stats.online_error())
                << " over " << stats.online_instances << " instances";
    }
    if (recipe.federated.privacy.mode == "local") {
      std::cout << "; local differential privacy: epsilon " << strata::format_metric(stats.epsilon)
                << " spent (delta " << strata::format_double(recipe.federated.privacy.delta)
                << ")" << (stats.budget_spent ? ", budget reached" : "");
    }
    std::cout << "\n";
    return 0;
  });
}
