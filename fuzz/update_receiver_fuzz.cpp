// An update's tensor chunks as a hostile client would send them, into the
// server's UpdateReceiver (federated/wire.h) and the codec's decode behind
// it. Whatever arrives: no crash, no exception, no read or write out of
// bounds, and an accepted update is exactly the model's size.
#include <cstdint>
#include <cstdlib>

#include "fuzz_layout.h"
#include "federated/wire.h"

namespace sf = strata::fed;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const sf::TensorLayout layout = sf::fuzz_layout();
  if (size < 1) return 0;
  const uint32_t announced = data[0] % 5;
  sf::UpdateReceiver rx(layout, announced, /*max_bytes=*/4096);
  for (const auto& bytes : sf::split_records(data + 1, size - 1)) {
    sf::pb::UpdateChunk chunk;
    if (!chunk.ParseFromString(bytes)) return 0;  // the service refuses it there
    if (rx.add(chunk)) return 0;
  }
  if (rx.finish()) return 0;
  const at::Tensor flat = rx.take();
  if (!flat.defined() || flat.numel() != layout.numel() || flat.scalar_type() != at::kFloat) {
    std::abort();
  }
  return 0;
}
