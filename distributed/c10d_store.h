// Private to distributed/: the c10d Store behind strata::dist::Store, shared
// by the backends that rendezvous through it (gloo, nccl).
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

namespace strata::dist {

class Store {
 public:
  explicit Store(c10::intrusive_ptr<c10d::Store> impl, int port = 0)
      : impl_(std::move(impl)), port_(port) {}
  const c10::intrusive_ptr<c10d::Store>& impl() const { return impl_; }
  int port() const { return port_; }

 private:
  c10::intrusive_ptr<c10d::Store> impl_;
  int port_;
};

}  // namespace strata::dist
