// The server's clock, injected: round deadlines, the gathering window and
// progress lines read it, so tests drive time (ManualClock::advance)
// instead of sleeping through deadlines. Durations measured for the record
// (aggregate_s, time_s) stay on the real clock.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>

namespace strata::fed {

class ServerClock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  virtual ~ServerClock() = default;
  virtual time_point now() const = 0;
  // Waits on `cv` (whose mutex `lock` holds) until this clock reaches
  // `deadline` or `cv` is notified; may return early (callers re-check).
  virtual void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                          time_point deadline) = 0;
};

// std::chrono::steady_clock.
class SteadyClock final : public ServerClock {
 public:
  time_point now() const override { return std::chrono::steady_clock::now(); }
  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                  time_point deadline) override {
    cv.wait_until(lock, deadline);
  }
};
std::shared_ptr<ServerClock> steady_clock();

// Time that moves only when a test says so. advance() wakes whoever waits
// in wait_until, so a deadline passed by advance() is seen at once.
class ManualClock final : public ServerClock {
 public:
  time_point now() const override;
  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                  time_point deadline) override;
  void advance(std::chrono::nanoseconds by);

 private:
  struct Waiter {
    std::mutex* mu;
    std::condition_variable* cv;
    bool operator<(const Waiter& o) const { return cv < o.cv; }
  };
  mutable std::mutex mu_;  // now_, waiters_
  std::mutex notify_mu_;   // Note [Manual clock wakeups] in clock.cpp
  time_point now_{};
  std::set<Waiter> waiters_;
};

}  // namespace strata::fed
