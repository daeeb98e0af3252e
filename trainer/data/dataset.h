// In-memory image classification datasets (raw uint8 pixels + labels).
//
// Shape legend: N samples, C channels, H height, W width.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::train {

struct ImageDataset {
  int64_t size = 0;      // N
  int64_t channels = 1;  // C
  int64_t height = 0;    // H
  int64_t width = 0;     // W
  int64_t classes = 0;
  std::vector<uint8_t> pixels;  // N*C*H*W, row-major
  std::vector<uint8_t> labels;  // N
  // Per-channel statistics of the training split, in [0, 1] pixel units,
  // applied as (x / 255 - mean) / std.
  float mean = 0.f;
  float std = 1.f;

  int64_t sample_bytes() const { return channels * height * width; }
};

// (x / 255 - mean) / std as the float affine map x * scale + shift that the
// loader applies (and an edge runtime must apply bit for bit: an int8
// model's input quantization rounds these values).
struct PixelAffine {
  float scale, shift;
};
inline PixelAffine pixel_affine(float mean, float std) {
  return {1.f / (255.f * std), -mean / std};
}

enum class Split { kTrain, kTest };

// Loads Fashion-MNIST from `root` (train-*/t10k-*-ubyte.gz). `subset` > 0
// keeps only the first `subset` samples. A missing directory names the Debian
// package that provides it.
ImageDataset load_fashion_mnist(const std::string& root, Split split,
                                int64_t subset = 0);

}  // namespace strata::train
