// Runs a function as N ranks, one thread each, with gloo communicators over
// an in-process store: fast multi-rank tests in one process (gloo's
// base_test.h pattern). A failure on any rank fails the test.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "distributed/communicator.h"

namespace strata::test {

// Each rank gets its communicator as a shared_ptr (for owners such as the
// GradientReducer).
inline void run_ranks_shared(
    int world,
    const std::function<void(std::shared_ptr<dist::Communicator>)>& body,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
  auto store = dist::make_memory_store();
  std::vector<std::thread> threads;
  std::mutex mu;
  std::vector<std::string> errors;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        dist::GlooOptions o;
        o.store = store;
        o.rank = r;
        o.size = world;
        o.timeout = timeout;
        body(dist::make_gloo_communicator(o));
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        errors.push_back("rank " + std::to_string(r) + ": " + e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) ADD_FAILURE() << e;
}

inline void run_ranks(
    int world, const std::function<void(dist::Communicator&)>& body,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
  run_ranks_shared(
      world, [&](std::shared_ptr<dist::Communicator> c) { body(*c); }, timeout);
}

}  // namespace strata::test
