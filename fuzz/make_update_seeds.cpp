// Writes valid update streams for fuzz_layout() in every encoding into the
// directory given: the update fuzzer's seed corpus.
#include <fstream>
#include <iostream>

#include "federated/codec.h"
#include "fuzz_layout.h"
#include "federated/wire.h"

namespace sf = strata::fed;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_update_seeds DIR\n";
    return 2;
  }
  const sf::TensorLayout layout = sf::fuzz_layout();
  int n = 0;
  for (const sf::Encoding enc : {sf::Encoding::kFp32, sf::Encoding::kFp16, sf::Encoding::kInt8,
                                 sf::Encoding::kTopK}) {
    std::string out(1, static_cast<char>(layout.slots().size()));
    for (const auto& s : layout.slots()) {
      const auto e = sf::encode(s.name, at::randn(s.shape), {enc, 0.5});
      sf::pb::UpdateChunk h;
      sf::to_proto(e, h.mutable_tensor());
      out += sf::record(h.SerializeAsString());
      for (size_t off = 0; off < e.data.size(); off += 8) {
        sf::pb::UpdateChunk d;
        d.set_data(e.data.substr(off, 8));
        out += sf::record(d.SerializeAsString());
      }
    }
    std::ofstream(std::string(argv[1]) + "/seed_" + sf::encoding_name(enc)) << out;
    ++n;
  }
  std::cout << "wrote " << n << " seeds to " << argv[1] << "\n";
  return 0;
}
