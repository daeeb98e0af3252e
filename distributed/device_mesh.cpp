#include "distributed/device_mesh.h"

#include "core/error.h"
#include "core/strings.h"

namespace strata::dist {

const char* axis_name(Axis axis) {
  switch (axis) {
    case Axis::kPipeline: return "pp";
    case Axis::kData: return "dp";
    case Axis::kTensor: return "tp";
  }
  return "?";
}

DeviceMesh::DeviceMesh(std::shared_ptr<Communicator> world, std::vector<MeshAxis> axes)
    : world_(world ? std::move(world) : make_self_communicator("world")),
      axes_(std::move(axes)),
      self_(make_self_communicator("self")) {
  STRATA_INTERNAL_ASSERT(!axes_.empty(), "a device mesh needs at least one axis");
  int64_t product = 1;
  for (size_t i = 0; i < axes_.size(); ++i) {
    STRATA_CHECK_T(ConfigError, axes_[i].size >= 1, "device mesh axis '",
                   axis_name(axes_[i].axis), "' has size ", axes_[i].size, "; sizes are >= 1");
    for (size_t j = 0; j < i; ++j) {
      STRATA_INTERNAL_ASSERT(axes_[j].axis != axes_[i].axis,
                             "device mesh axis '", axis_name(axes_[i].axis), "' listed twice");
    }
    product *= axes_[i].size;
  }
  STRATA_CHECK_T(ConfigError, product == world_->size(), "the device mesh ",
                 describe(), " has ", product, " ranks but the job has ",
                 world_->size(), "; launch ", product, " ranks or change the "
                 "parallel sizes so that their product is ", world_->size());

  // Coordinates: the last axis varies fastest.
  int rest = world_->rank();
  coords_.assign(axes_.size(), 0);
  for (size_t i = axes_.size(); i-- > 0;) {
    coords_[i] = rest % axes_[i].size;
    rest /= axes_[i].size;
  }
  // One group per axis: ranks equal on every other axis. The color is this
  // rank's index with the axis' coordinate zeroed, the key its coordinate.
  for (size_t i = 0; i < axes_.size(); ++i) {
    const int stride = [&] {
      int s = 1;
      for (size_t j = i + 1; j < axes_.size(); ++j) s *= axes_[j].size;
      return s;
    }();
    if (axes_[i].size == 1) {
      groups_.push_back(make_self_communicator(axis_name(axes_[i].axis)));
    } else if (axes_[i].size == world_->size()) {
      groups_.push_back(world_);
    } else {
      const int color = world_->rank() - coords_[i] * stride;
      groups_.push_back(world_->split(color, coords_[i], axis_name(axes_[i].axis)));
    }
    STRATA_INTERNAL_ASSERT(groups_.back()->size() == axes_[i].size &&
                           groups_.back()->rank() == coords_[i],
                           "mesh axis '", axis_name(axes_[i].axis), "': group rank ",
                           groups_.back()->rank(), "/", groups_.back()->size(),
                           ", expected ", coords_[i], "/", axes_[i].size);
  }
}

size_t DeviceMesh::index(Axis axis) const {
  for (size_t i = 0; i < axes_.size(); ++i) {
    if (axes_[i].axis == axis) return i;
  }
  return axes_.size();
}

bool DeviceMesh::has(Axis axis) const { return index(axis) < axes_.size(); }
int DeviceMesh::size(Axis axis) const {
  const size_t i = index(axis);
  return i < axes_.size() ? axes_[i].size : 1;
}
int DeviceMesh::coord(Axis axis) const {
  const size_t i = index(axis);
  return i < axes_.size() ? coords_[i] : 0;
}
const std::shared_ptr<Communicator>& DeviceMesh::group(Axis axis) const {
  const size_t i = index(axis);
  return i < axes_.size() ? groups_[i] : self_;
}

std::string DeviceMesh::describe() const {
  std::vector<std::string> parts;
  for (const auto& a : axes_) parts.push_back(str(axis_name(a.axis), "=", a.size));
  return join(parts, " x ");
}

}  // namespace strata::dist
