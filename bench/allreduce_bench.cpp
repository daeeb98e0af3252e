// All-reduce bus bandwidth, 4 KB - 64 MB, run under mpirun:
//   strata gloo     Strata's Communicator (gloo backend)
//   raw c10d gloo   LibTorch's ProcessGroupGloo called directly
//   raw MPI         MPI_Allreduce (Open MPI)
//   reducer         GradientReducer::finish() for parameters of that total
//                   size (25 MiB buckets, overlap off so finish() launches
//                   and completes every bucket, averages and writes .grad)
//                   -- the communication data parallelism pays per step
// Bus bandwidth = bytes * 2 (n - 1) / n / time (the nccl-tests convention);
// the time of an iteration is the slowest rank's.
//
//   mpirun -np 2 build/bin/allreduce_bench [--max-mb 64]
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <CLI/CLI.hpp>

#include <mpi.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>

#include "distributed/c10d_store.h"
#include "distributed/gradient_reducer.h"
#include "distributed/mpi_bootstrap.h"
#include "distributed/rank_info.h"

namespace sd = strata::dist;
using Clock = std::chrono::steady_clock;

// Seconds per call of `op`, the slowest rank's, after warm-up. Every column
// uses the same protocol: untimed `prepare` (the reducer's backward), a
// barrier, then one timed `op`; the per-iteration times are summed.
double time_op(const std::function<void()>& op, int iters,
               const std::function<void()>& prepare = [] {}) {
  double total = 0;
  for (int i = 0; i < iters + 3; ++i) {
    prepare();
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    op();
    if (i >= 3) total += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  double s = total / iters;
  MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return s;
}

int main(int argc, char** argv) {
  CLI::App app("All-reduce bus bandwidth, 4 KB up to --max-mb: Strata gloo vs raw c10d gloo vs "
               "raw MPI_Allreduce, and the bucketed GradientReducer. Run under mpirun -np N.",
               "allreduce_bench");
  int64_t max_mb = 64;
  app.add_option("--max-mb", max_mb, "largest message, MB (>= 1)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return e.get_exit_code() == 0 ? app.exit(e) : (app.exit(e), 2);
  }
  if (max_mb < 1) {
    std::fprintf(stderr, "allreduce_bench: error: --max-mb must be >= 1\n");
    return 2;
  }
  at::set_num_threads(1);
  sd::MpiSession mpi;
  const sd::RankInfo info = sd::discover_ranks();
  auto store = mpi.rendezvous(info, std::chrono::milliseconds(60000));
  sd::GlooOptions go;
  go.store = store;
  go.rank = info.rank;
  go.size = info.world;
  go.timeout = std::chrono::milliseconds(120000);
  auto comm = sd::make_gloo_communicator(go);
  auto opts = c10d::ProcessGroupGloo::Options::create(go.timeout);
  opts->devices.push_back(
      c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  opts->threads = 2;
  auto raw = c10::make_intrusive<c10d::ProcessGroupGloo>(
      c10::make_intrusive<c10d::PrefixStore>("raw", store->impl()), info.rank,
      info.world, opts);

  const int n = info.world;
  if (info.rank == 0) {
    std::printf("| size | strata gloo GB/s | raw c10d gloo GB/s | raw MPI GB/s | "
                "strata / raw gloo | reducer GB/s | reducer / raw gloo |\n"
                "|---|---|---|---|---|---|---|\n");
  }
  for (int64_t bytes = 4096; bytes <= (max_mb << 20); bytes *= 4) {
    const int64_t numel = bytes / 4;
    const int iters = static_cast<int>(std::max<int64_t>(5, std::min<int64_t>(
        1000, (int64_t(1024) << 20) / bytes)));
    at::Tensor t = at::ones({numel});
    const double strata = time_op([&] {
      comm->all_reduce(t, sd::ReduceOp::kSum)->wait();
    }, iters);
    const double raw_gloo = time_op([&] {
      std::vector<at::Tensor> v{t};
      raw->allreduce(v)->wait();
    }, iters);
    const double raw_mpi = time_op([&] {
      MPI_Allreduce(MPI_IN_PLACE, t.data_ptr<float>(), static_cast<int>(numel),
                    MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }, iters);
    // Parameters of 256 KB each (or one if smaller), hooks fired by a
    // backward outside the timed region; overlap off so finish() does all
    // the communication.
    std::vector<std::pair<std::string, at::Tensor>> params;
    const int64_t per = std::min<int64_t>(numel, 65536);
    for (int64_t k = 0; k * per < numel; ++k) {
      params.emplace_back("p" + std::to_string(k),
                          at::ones({std::min(per, numel - k * per)}).requires_grad_());
    }
    sd::GradientReducerOptions ro;
    ro.overlap = false;
    sd::GradientReducer reducer(params, comm, ro);
    const double reducer_s = time_op([&] { reducer.finish(); }, iters, [&] {
      at::Tensor loss = at::zeros({});
      for (auto& p : params) loss = loss + p.second.sum();
      loss.backward();
    });
    auto busbw = [&](double s) { return bytes * 2.0 * (n - 1) / n / s / 1e9; };
    if (info.rank == 0) {
      char size[32];
      if (bytes >= (1 << 20)) {
        std::snprintf(size, sizeof(size), "%lld MB", static_cast<long long>(bytes >> 20));
      } else {
        std::snprintf(size, sizeof(size), "%lld KB", static_cast<long long>(bytes >> 10));
      }
      std::printf("| %s | %.3f | %.3f | %.3f | %.2f | %.3f | %.2f |\n", size,
                  busbw(strata), busbw(raw_gloo), busbw(raw_mpi),
                  raw_gloo / strata, busbw(reducer_s), raw_gloo / reducer_s);
      std::fflush(stdout);
    }
  }
  return 0;
}
