// safetensors: the weights format Hugging Face users load (the Python
// `safetensors` package, `safetensors.torch.load_file`). A file is
//   uint64 little-endian N, N bytes of a JSON header, the tensors' bytes
// where the header maps each name to {"dtype": "F32", "shape": [...],
// "data_offsets": [begin, end]} (offsets into the bytes after the header)
// and "__metadata__" to a {string: string} map. Tensors are contiguous and
// little-endian, without gaps or overlaps; the header is padded with spaces
// to a multiple of 8 bytes.
//
// Reading treats the file as untrusted: the header's size and every
// offset, shape and dtype are checked against the file (IoError naming
// the file and the entry); nothing is executed (unlike a pickle).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace strata::train {

struct SafetensorsFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // by name
  std::map<std::string, std::string> metadata;
};

// Writes `tensors` (CPU copies taken of any device) atomically. ConfigError
// for a dtype safetensors has no name for, or a repeated name.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

SafetensorsFile load_safetensors(const std::string& path);

}  // namespace strata::train
