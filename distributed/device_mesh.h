// The ranks of a job laid out on a grid, with one communicator per axis.
//
// A mesh of axes {pipeline: 2, data: 2, tensor: 2} over 8 ranks places rank
// r = (pp_i * 2 + dp_i) * 2 + tp_i: axes are listed outermost first and the
// last one varies fastest, so the innermost axis (tensor parallelism, the
// chattiest) gets neighbouring ranks, which launchers put on one host
// (Megatron-core's order). group(Axis::kData) is the communicator of the ranks that
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

// The kinds of parallelism a mesh axis can carry.
enum class Axis {
  kPipeline,  // "pp": pipeline stages
  kData,      // "dp": data-parallel replicas
  kTensor,    // "tp": tensor-parallel shards of each layer
};
// "pp", "dp", "tp": in messages and as communicator names.
const char* axis_name(Axis axis);

struct MeshAxis {
  Axis axis = Axis::kData;
  int size = 1;  // >= 1
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

  // Per axis; an axis the mesh does not list has size 1, coordinate 0
  // and a self group.
  int size(Axis axis) const;
  int coord(Axis axis) const;
  const std::shared_ptr<Communicator>& group(Axis axis) const;
  bool has(Axis axis) const;

  // "pp=1 x dp=2 x tp=1".
  std::string describe() const;

 private:
  // Index into axes_, or axes_.size() when absent.
  size_t index(Axis axis) const;

  std::shared_ptr<Communicator> world_;
  std::vector<MeshAxis> axes_;
  std::vector<int> coords_;
  std::vector<std::shared_ptr<Communicator>> groups_;
  std::shared_ptr<Communicator> self_;  // the group of an absent axis
};

}  // namespace strata::dist
