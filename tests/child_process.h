// A child process for tests that drive Strata's executables as a user
// would (a server in the background, killed and restarted): its stdout and
// stderr come back through a pipe, and a test waits on what it printed or on
// its exit -- woken when that happens, with a deadline, never by sleeping
// and looking again.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

namespace strata::test {

class ChildProcess {
 public:
  // Runs `command` through /bin/sh (exec'd, so pid() is the command's;
  // variables go through env: "env A=1 prog").
  explicit ChildProcess(const std::string& command) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    const std::string cmd = "exec " + command;
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec.
      ::dup2(fds[1], STDOUT_FILENO);
      ::dup2(fds[1], STDERR_FILENO);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] { read_output(fd); });
    waiter_ = std::thread([this] { reap(); });
  }
  ~ChildProcess() {
    if (!exited()) ::kill(pid_, SIGKILL);
    waiter_.join();
    reader_.join();
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int sig) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status_) ::kill(pid_, sig);  // not once reaped: the pid may be reused
  }

  // Everything it printed so far.
  std::string output() {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }

  // Waits until its output holds `needle` at least `count` times; false
  // when it closed its output (or `wait` passed) first.
  bool wait_output(const std::string& needle, int count, std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto seen = [&] {
      int n = 0;
      for (size_t at = output_.find(needle); at != std::string::npos && n < count;
           at = output_.find(needle, at + needle.size())) {
        ++n;
      }
      return n >= count;
    };
    changed_.wait_for(lock, wait, [&] { return seen() || output_closed_; });
    return seen();
  }

  // Its wait status once it exited; nullopt when it still runs after `wait`.
  std::optional<int> wait_exit(std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait_for(lock, wait, [&] { return status_.has_value(); });
    return status_;
  }

  bool exited() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_.has_value();
  }

 private:
  void read_output(int fd) {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      std::lock_guard<std::mutex> lock(mu_);
      output_.append(buf, static_cast<size_t>(n));
      changed_.notify_all();
    }
    ::close(fd);
    std::lock_guard<std::mutex> lock(mu_);
    output_closed_ = true;
    changed_.notify_all();
  }
  void reap() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    changed_.notify_all();
  }

  pid_t pid_ = -1;
  std::mutex mu_;
  std::condition_variable changed_;  // output, output_closed_ or status_ changed
  std::string output_;
  bool output_closed_ = false;
  std::optional<int> status_;
  std::thread reader_, waiter_;
};

}  // namespace strata::test
