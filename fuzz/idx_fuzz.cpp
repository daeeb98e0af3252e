// IDX files (the datasets' format): parse_idx returns an array whose data
// is exactly the product of its dimensions, or throws DataError.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "trainer/data/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  try {
    const strata::train::IdxArray a = strata::train::parse_idx(bytes, "fuzz.idx");
    size_t count = 1;
    for (int64_t d : a.dims) count *= static_cast<size_t>(d);
    if (a.dims.empty() || count != a.data.size()) std::abort();
    if (strata::train::encode_idx(a).size() != size) std::abort();
  } catch (const strata::DataError&) {
  }
  return 0;
}
