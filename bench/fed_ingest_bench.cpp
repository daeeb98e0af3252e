// Federated server ingest: updates/s, MB/s and the server's peak RSS against
// the number of concurrent clients, for a ~1M- and a ~10M-parameter model,
// next to the loopback TCP bandwidth of this machine.
//
//   build/bin/fed_ingest_bench [SECONDS] [CLIENTS,...] [1m|10m|both] [WINDOW_KB,...]
//   (default 8 1,10,50,100,200 both 256; window 0 is gRPC's adaptive
//   stream windows, for comparison with the fixed default)
//
// The server is a real strata-fedserver process (async mode, buffer 10,
// every update fsync'ed into SQLite before its ack, an aggregation and a
// version file per 10 updates, the default admission limits: 4 updates
// received at once, 16 senders waiting); every client is a thread with its
// own gRPC channel sending fp32 updates back to back, retrying when the
// server says it is busy. The server restarts for every row, so its peak
// RSS (VmHWM) belongs to that row; its thread count is read at the end of
// the measured window.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/net.h"
#include "core/strings.h"
#include "federated/client.h"
#include "federated/layout.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"
#include "trainer/cli.h"

namespace sf = strata::fed;
namespace st = strata::train;
using Clock = std::chrono::steady_clock;

namespace {

// One TCP connection on loopback, 1 MiB writes for `seconds`: GB/s.
double loopback_gbps(double seconds) {
  const int port = strata::free_loopback_port();
  int srv = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  ::bind(srv, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::listen(srv, 1);
  std::atomic<uint64_t> received{0};
  std::thread reader([&] {
    int c = ::accept(srv, nullptr, nullptr);
    std::vector<char> buf(1 << 20);
    ssize_t n;
    while ((n = ::read(c, buf.data(), buf.size())) > 0) received += static_cast<uint64_t>(n);
    ::close(c);
  });
  int cli = ::socket(AF_INET, SOCK_STREAM, 0);
  ::connect(cli, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  std::vector<char> buf(1 << 20, 'x');
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
    if (::write(cli, buf.data(), buf.size()) <= 0) break;
  }
  ::close(cli);
  reader.join();
  ::close(srv);
  return static_cast<double>(received) / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9;
}

// Files of `bytes` each written and fsync'ed back to back in `dir` for
// `seconds`, as the server's ledger does for every update: MB/s.
double durable_write_mbps(const std::string& dir, size_t bytes, double seconds) {
  strata::make_dirs(dir);
  const std::string data(bytes, 'x');
  size_t written = 0;
  int i = 0;
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
    strata::atomic_write_file(dir + "/f" + std::to_string(i++ % 8), data);
    written += bytes;
  }
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  std::system(("rm -rf " + dir).c_str());
  return static_cast<double>(written) / dt / 1e6;
}

// A numeric field of /proc/PID/status ("VmHWM:" in KiB, "Threads:").
long proc_status(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(field.size()));
  }
  return -1;
}

// The server's count of busy replies, from GetStatus.
int64_t busy_replies(sf::EdgeClient& client) {
  const std::string s = client.status();
  const std::string key = "rejected.busy ";
  const size_t at = s.find(key);
  return at == std::string::npos ? 0 : std::stoll(s.substr(at + key.size()));
}

struct Row {
  double updates_per_s = 0, mb_per_s = 0, busy_per_s = 0;
  long rss_kib = 0, threads = 0;
  int64_t refused = 0;
};

Row run(const std::string& dir, const std::string& hidden, int clients, double seconds,
        int window_kb) {
  std::system(("rm -rf " + dir).c_str());
  strata::make_dirs(dir);
  const int port = strata::free_loopback_port();
  const std::string recipe = dir + "/r.yaml";
  std::ofstream(recipe) << "run: {dir: " << dir << "/run}\n"
                        << "model: {name: mlp, hidden: " << hidden << "}\n"
                        << "data: {test_subset: 100}\n"
                        << "federated:\n  mode: async\n"
                        << "  async: {versions: 1000000000, buffer_size: 10, max_staleness: 1000000000}\n"
                        << "  server: {address: 127.0.0.1:" << port
                        << ", eval_every: 1000000000, max_message_mb: 1024, stream_window_kb: "
                        << window_kb << "}\n";
  std::string ids;
  for (int c = 0; c < clients; ++c) ids += " c" + std::to_string(c);
  FILE* p = ::popen((std::string(STRATA_FEDSERVER_BIN) + " enroll " + recipe + ids).c_str(), "r");
  std::vector<std::string> tokens;
  char line[256];
  while (std::fgets(line, sizeof(line), p)) {
    std::string s(line);
    tokens.push_back(s.substr(s.find(' ') + 1, 64));
  }
  ::pclose(p);
  const pid_t server = ::fork();
  if (server == 0) {
    const std::string cmd = std::string("exec ") + STRATA_FEDSERVER_BIN + " " + recipe +
                            " >" + dir + "/server.log 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const st::Recipe r = st::load_recipe(recipe);
  auto model = st::builtin_registries().models.get("mlp", "", "model.name").build(r.model, {}, {});
  const sf::TensorLayout layout = sf::TensorLayout::of(*model);
  std::vector<sf::EncodedTensor> encoded;
  for (const auto& [name, t] : layout.unflatten(at::full({layout.numel()}, 1e-6f))) {
    encoded.push_back(sf::encode(name, t, {}));
  }
  size_t bytes = 0;
  for (const auto& e : encoded) bytes += e.data.size();
  std::atomic<bool> measuring{false}, stop{false};
  std::atomic<int64_t> done{0}, refused{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      sf::EdgeClientOptions o;
      o.address = "127.0.0.1:" + std::to_string(port);
      o.client_id = "c" + std::to_string(c);
      o.token = tokens[c];
      o.max_retries = 30;
      sf::EdgeClient client(o);
      sf::UpdateToSend u;
      u.base_version = 1;
      u.num_samples = 1;
      while (!stop) {
        try {
          const auto res = client.submit_encoded(u, encoded);
          if (!res.accepted) ++refused;
          if (measuring && res.accepted) ++done;
        } catch (const strata::CommError&) {  // retries ran out
          ++refused;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));  // server start + warm-up
  sf::EdgeClientOptions so;
  so.address = "127.0.0.1:" + std::to_string(port);
  so.client_id = "c0";
  so.token = tokens[0];
  sf::EdgeClient observer(so);
  const int64_t busy0 = busy_replies(observer);
  measuring = true;
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  Row row;
  row.updates_per_s = static_cast<double>(done) / dt;
  row.mb_per_s = row.updates_per_s * static_cast<double>(bytes) / 1e6;
  row.busy_per_s = static_cast<double>(busy_replies(observer) - busy0) / dt;
  row.threads = proc_status(server, "Threads:");
  stop = true;
  for (auto& t : threads) t.join();
  row.rss_kib = proc_status(server, "VmHWM:");
  row.refused = refused;
  ::kill(server, SIGTERM);
  ::waitpid(server, nullptr, 0);
  return row;
}

}  // namespace

int bench(int argc, char** argv);

int main(int argc, char** argv) {
  return strata::train::run_main("fed_ingest_bench", [&] { return bench(argc, argv); });
}

int bench(int argc, char** argv) {
  auto app = strata::train::make_app(
      "fed_ingest_bench",
      "Federated server ingest (updates/s, MB/s, peak RSS, threads, busy replies) against "
      "concurrent clients, next to loopback TCP and durable-write bandwidth.");
  double seconds = 8.0;
  std::vector<int> counts{1, 10, 50, 100, 200};
  std::string model = "both";
  std::vector<int> windows{256};
  app->add_option("seconds", seconds, "seconds per configuration");
  std::string counts_text, windows_text;
  app->add_option("clients", counts_text, "concurrent client counts (default 1,10,50,100,200)")
      ->type_name("N,...");
  app->add_option("model", model, "which model")->check(CLI::IsMember({"1m", "10m", "both"}));
  app->add_option("windows", windows_text, "HTTP/2 stream windows in KiB (default 256)")
      ->type_name("KB,...");
  if (!strata::train::parse_args(*app, argc, argv)) return 0;
  const auto numbers = [](const std::string& text, const char* what) {
    std::vector<int> out;
    for (const auto& s : strata::split(text, ',')) {
      int v = 0;
      const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      STRATA_CHECK_T(UsageError, ec == std::errc() && end == s.data() + s.size() && v > 0,
                     what, ": '", s, "' is not a positive integer");
      out.push_back(v);
    }
    return out;
  };
  if (!counts_text.empty()) counts = numbers(counts_text, "clients");
  if (!windows_text.empty()) windows = numbers(windows_text, "windows");
  STRATA_CHECK_T(UsageError, seconds > 0, "seconds must be > 0");
  const std::string only = model == "both" ? "" : model;
  const std::string tmp = "/tmp/strata_fed_ingest";
  std::cout << "loopback TCP, one connection: " << strata::format_double(loopback_gbps(2.0))
            << " GB/s\n";
  std::cout << "durable writes (4.3 MB files, fsync'ed and renamed, in " << tmp << "): "
            << strata::format_double(durable_write_mbps(tmp + "_disk", 4280000, 2.0))
            << " MB/s\n\n";
  std::cout << "| model | update MB | stream window KiB | clients | updates/s | MB/s | server peak RSS MiB | server threads | busy replies/s | refused |\n"
               "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& [label, hidden] : std::vector<std::pair<std::string, std::string>>{
           {"mlp 784-1024-256-10 (1.07M)", "[1024, 256]"},
           {"mlp 784-4096-1536-10 (9.5M)", "[4096, 1536]"}}) {
    if (!only.empty() && label.find(only == "1m" ? "1.07M" : "9.5M") == std::string::npos) continue;
    for (int c : counts) {
      for (int w : windows) {
        const Row r = run(tmp, hidden, c, seconds, w);
        const double mb = label.find("1.07M") != std::string::npos ? 1.07e6 * 4 / 1e6 : 9.5e6 * 4 / 1e6;
        std::printf("| %s | %.1f | %s | %d | %.1f | %.1f | %.0f | %ld | %.1f | %lld |\n",
                    label.c_str(), mb, w == 0 ? "adaptive" : std::to_string(w).c_str(), c,
                    r.updates_per_s, r.mb_per_s, static_cast<double>(r.rss_kib) / 1024.0,
                    r.threads, r.busy_per_s, static_cast<long long>(r.refused));
        std::fflush(stdout);
      }
    }
  }
  std::system(("rm -rf " + tmp).c_str());
  return 0;
}
