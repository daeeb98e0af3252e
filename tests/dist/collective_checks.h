// Checks of every collective against a single-process reference, written
// against Communicator so the same assertions run on thread ranks and on
// real processes under mpirun, for every backend. `dev` is where the tensors
// live (CUDA for nccl); expectations are computed on the CPU.
#pragma once

#include <gtest/gtest.h>

#include "distributed/communicator.h"

namespace strata::test {

// Rank r's input: a deterministic tensor that differs per rank.
inline at::Tensor rank_input(int rank, at::ScalarType dtype, int64_t n = 37) {
  return (at::arange(n, at::kDouble) * (rank + 1) - 3 * rank).to(dtype);
}

inline void check_all_reduce(dist::Communicator& c, at::Device dev = at::kCPU) {
  using dist::ReduceOp;
  const int world = c.size();
  for (auto dtype : {at::kFloat, at::kDouble, at::kLong, at::kHalf, at::kBFloat16}) {
    // 16-bit floats: inputs are integers <= 144, sums <= 360; fp16 holds
    // them exactly, bf16 to 8 bits of mantissa, averages round in both.
    const double rtol = dtype == at::kHalf ? 1e-3 : dtype == at::kBFloat16 ? 1e-2 : 1e-5;
    std::vector<at::Tensor> all;
    for (int r = 0; r < world; ++r) all.push_back(rank_input(r, dtype).to(at::kDouble));
    at::Tensor stacked = at::stack(all);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
      if (op == ReduceOp::kAvg && dtype == at::kLong) continue;
      at::Tensor expected =
          op == ReduceOp::kSum   ? stacked.sum(0)
          : op == ReduceOp::kMax ? std::get<0>(stacked.max(0))
          : op == ReduceOp::kMin ? std::get<0>(stacked.min(0))
                                 : stacked.sum(0) / world;
      at::Tensor t = rank_input(c.rank(), dtype).to(dev);
      c.all_reduce(t, op)->wait();
      EXPECT_TRUE(at::allclose(t.cpu().to(at::kDouble), expected.to(dtype).to(at::kDouble), rtol))
          << c.backend() << " " << dist::reduce_op_name(op) << " " << dtype
          << " rank " << c.rank() << "/" << world;
    }
  }
}

inline void check_broadcast(dist::Communicator& c, at::Device dev = at::kCPU) {
  for (int root = 0; root < c.size(); ++root) {
    at::Tensor t = rank_input(c.rank(), at::kFloat).to(dev);
    c.broadcast(t, root)->wait();
    EXPECT_TRUE(at::equal(t.cpu(), rank_input(root, at::kFloat))) << c.backend();
  }
}

inline void check_all_gather_and_reduce_scatter(dist::Communicator& c,
                                                at::Device dev = at::kCPU) {
  const int world = c.size();
  const auto opts = at::TensorOptions(at::kDouble).device(dev);
  std::vector<at::Tensor> out;
  for (int r = 0; r < world; ++r) out.push_back(at::empty({37}, opts));
  c.all_gather(out, rank_input(c.rank(), at::kDouble).to(dev))->wait();
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(at::equal(out[r].cpu(), rank_input(r, at::kDouble))) << c.backend();
  }
  // Rank r receives the sum over ranks q of q's chunk r: (q+1)*(r+1).
  std::vector<at::Tensor> chunks;
  for (int r = 0; r < world; ++r) {
    chunks.push_back(at::full({5}, double((c.rank() + 1) * (r + 1)), opts));
  }
  at::Tensor mine = at::empty({5}, opts);
  c.reduce_scatter(mine, chunks, dist::ReduceOp::kSum)->wait();
  const double expected = (c.rank() + 1) * world * (world + 1) / 2.0;
  EXPECT_TRUE(at::equal(mine.cpu(), at::full({5}, expected, at::kDouble))) << c.backend();
}

inline void check_send_recv_and_barrier(dist::Communicator& c, at::Device dev = at::kCPU) {
  const int world = c.size();
  if (world > 1) {
    const int next = (c.rank() + 1) % world;
    const int prev = (c.rank() + world - 1) % world;
    at::Tensor got = at::empty({37}, at::TensorOptions(at::kFloat).device(dev));
    auto s = c.send(rank_input(c.rank(), at::kFloat).to(dev), next, /*tag=*/7);
    auto r = c.recv(got, prev, /*tag=*/7);
    s->wait();
    r->wait();
    EXPECT_TRUE(at::equal(got.cpu(), rank_input(prev, at::kFloat))) << c.backend();
  }
  c.barrier()->wait();
}

inline void check_all_collectives(dist::Communicator& c, at::Device dev = at::kCPU) {
  check_all_reduce(c, dev);
  check_broadcast(c, dev);
  check_all_gather_and_reduce_scatter(c, dev);
  check_send_recv_and_barrier(c, dev);
}

}  // namespace strata::test
