#include "federated/clock.h"

#include <vector>

namespace strata::fed {

std::shared_ptr<ServerClock> steady_clock() {
  static const auto clock = std::make_shared<SteadyClock>();
  return clock;
}

ServerClock::time_point ManualClock::now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_;
}

// Note [Manual clock wakeups]: the waiter registers and checks the
// deadline under this clock's mutex while still holding its own; advance()
// moves time under this clock's mutex and then, holding only notify_mu_,
// takes each waiter's mutex to notify it. So either the waiter sees the new
// time before it waits, or the notification comes after cv.wait released
// the waiter's mutex: no wakeup is lost. A waiter leaves the set only with
// its own mutex released and notify_mu_ held, so advance() never touches a
// waiter that has returned (and whose condition variable may be gone), and
// no two locks are ever taken in opposite orders.
void ManualClock::wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                             time_point deadline) {
  const Waiter w{lock.mutex(), &cv};
  {
    std::lock_guard<std::mutex> g(mu_);
    if (now_ >= deadline) return;
    waiters_.insert(w);
  }
  cv.wait(lock);
  lock.unlock();
  {
    std::lock_guard<std::mutex> n(notify_mu_);
    std::lock_guard<std::mutex> g(mu_);
    waiters_.erase(w);
  }
  lock.lock();
}

void ManualClock::advance(std::chrono::nanoseconds by) {
  std::lock_guard<std::mutex> n(notify_mu_);
  std::vector<Waiter> wake;
  {
    std::lock_guard<std::mutex> g(mu_);
    now_ += by;
    wake.assign(waiters_.begin(), waiters_.end());
  }
  for (const Waiter& w : wake) {
    std::lock_guard<std::mutex> g(*w.mu);
    w.cv->notify_all();
  }
}

}  // namespace strata::fed
