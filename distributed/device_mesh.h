// The ranks of a job laid out on a grid, with one communicator per axis.
//
// A mesh of axes {pp: 2, dp: 2, tp: 2} over 8 ranks places rank
// r = (pp_i * 2 + dp_i) * 2 + tp_i: axes are listed outermost first and the
// last one varies fastest, so the innermost axis (tensor parallelism, the
// chattiest) gets neighbouring ranks, which launchers put on one host
// (Megatron-core's order). group("dp") is the communicator of the ranks that
// share this rank's coordinates on every other axis.
//
// Construction is collective over `world`. An axis of size 1 gets a self
// communicator, an axis spanning the whole world reuses `world`; the others
// come from Communicator::split.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "distributed/communicator.h"

namespace strata::dist {

struct MeshAxis {
  std::string name;  // "pp", "dp", "tp", ...
  int size = 1;      // >= 1
};

class DeviceMesh {
 public:
  // `world` null means a one-process job. ConfigError when the product of
  // the axis sizes is not the world size (the message gives both and the
  // fix); names must be distinct.
  DeviceMesh(std::shared_ptr<Communicator> world, std::vector<MeshAxis> axes);

  int rank() const { return world_->rank(); }
  int size() const { return world_->size(); }
  const std::shared_ptr<Communicator>& world() const { return world_; }

  // Per axis; InternalError for an axis the mesh does not have.
  int size(const std::string& axis) const;
  int coord(const std::string& axis) const;
  const std::shared_ptr<Communicator>& group(const std::string& axis) const;

  // "pp=1 x dp=2 x tp=1".
  std::string describe() const;

 private:
  size_t index(const std::string& axis) const;

  std::shared_ptr<Communicator> world_;
  std::vector<MeshAxis> axes_;
  std::vector<int> coords_;
  std::vector<std::shared_ptr<Communicator>> groups_;
};

}  // namespace strata::dist
