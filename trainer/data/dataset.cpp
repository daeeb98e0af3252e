#include "trainer/data/dataset.h"

#include <algorithm>

#include "core/error.h"
#include "core/fs.h"
#include "trainer/data/idx.h"

namespace strata::train {

ImageDataset load_fashion_mnist(const std::string& root, Split split,
                                int64_t subset) {
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string images_path =
      join_path(root, prefix + "-images-idx3-ubyte.gz");
  const std::string labels_path =
      join_path(root, prefix + "-labels-idx1-ubyte.gz");
  STRATA_CHECK_T(DataError, path_exists(images_path) && path_exists(labels_path),
                 "Fashion-MNIST not found: '", images_path, "' or '",
                 labels_path, "' is missing. Install it with "
                 "'apt-get install dataset-fashion-mnist' (Debian), or set "
                 "data.root to a directory holding the four *-ubyte.gz files");
  IdxArray images = read_idx(images_path);
  IdxArray labels = read_idx(labels_path);
  STRATA_CHECK_T(DataError, images.dims.size() == 3, "'", images_path,
                 "' should hold N x H x W images but has ", images.dims.size(),
                 " dimensions");
  STRATA_CHECK_T(DataError, labels.dims.size() == 1 &&
                     labels.dims[0] == images.dims[0],
                 "'", labels_path, "' has ", labels.dims[0],
                 " labels for ", images.dims[0], " images in '", images_path,
                 "'");
  ImageDataset ds;
  ds.size = images.dims[0];
  ds.height = images.dims[1];
  ds.width = images.dims[2];
  ds.classes = 10;
  // Training-split statistics of Fashion-MNIST (the usual constants).
  ds.mean = 0.2860f;
  ds.std = 0.3530f;
  if (subset > 0 && subset < ds.size) ds.size = subset;
  const size_t n = static_cast<size_t>(ds.size);
  ds.pixels.assign(images.data.begin(),
                   images.data.begin() + n * ds.sample_bytes());
  ds.labels.assign(labels.data.begin(), labels.data.begin() + n);
  for (uint8_t y : ds.labels) {
    STRATA_CHECK_T(DataError, y < ds.classes, "'", labels_path,
                   "' has label ", int(y), " outside [0, ", ds.classes, ")");
  }
  return ds;
}

}  // namespace strata::train
