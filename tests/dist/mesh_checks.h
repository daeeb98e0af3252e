// Checks that each axis group of a DeviceMesh holds exactly the ranks that
// share this rank's other coordinates, computed from the layout rule
// (last axis fastest) independently of the mesh's own arithmetic.
#pragma once

#include <gtest/gtest.h>

#include "collective_checks.h"
#include "distributed/device_mesh.h"

namespace strata::test {

// Coordinates of world rank r on a mesh with these axis sizes.
inline std::vector<int> mesh_coords(int r, const std::vector<int>& sizes) {
  std::vector<int> c(sizes.size());
  for (size_t i = sizes.size(); i-- > 0;) {
    c[i] = r % sizes[i];
    r /= sizes[i];
  }
  return c;
}

inline void check_mesh_groups(const dist::DeviceMesh& mesh,
                              const std::vector<dist::Axis>& names,
                              const std::vector<int>& sizes) {
  const int me = mesh.rank();
  const auto my = mesh_coords(me, sizes);
  for (size_t i = 0; i < names.size(); ++i) {
    auto& g = *mesh.group(names[i]);
    EXPECT_EQ(g.size(), sizes[i]) << dist::axis_name(names[i]);
    EXPECT_EQ(g.rank(), my[i]) << dist::axis_name(names[i]);
    EXPECT_EQ(mesh.coord(names[i]), my[i]) << dist::axis_name(names[i]);
    // Sum of world ranks over the group vs the ranks equal to me elsewhere.
    double expected = 0;
    for (int r = 0; r < mesh.size(); ++r) {
      auto c = mesh_coords(r, sizes);
      c[i] = my[i];
      if (c == my) expected += r;
    }
    at::Tensor t = at::full({5}, double(me), at::kDouble);
    g.all_reduce(t, dist::ReduceOp::kSum)->wait();
    EXPECT_TRUE(at::equal(t, at::full({5}, expected, at::kDouble)))
        << "axis " << dist::axis_name(names[i]) << " rank " << me << ": got " << t[0].item<double>()
        << ", expected " << expected;
    check_all_collectives(g);
  }
}

}  // namespace strata::test
