// Token sequences for language modelling: the bytes of a text, or a file of
// uint16 token ids, memory-mapped (the format nanoGPT's prepare scripts
// and llm.c write: train.bin / val.bin).
//
// A token file is either raw little-endian uint16 ids (nanoGPT), or llm.c's
// layout: a header of 256 int32 (magic 20240520, version 1, the token
// count) and then the uint16 ids. The header is recognised by its magic.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace strata::train {

// A read-only sequence of token ids. Thread safe (immutable).
class Tokens {
 public:
  virtual ~Tokens() = default;
  virtual int64_t size() const = 0;
  // out[i] = token (start + i) for i in [0, n); start + n <= size().
  virtual void copy(int64_t start, int64_t n, int64_t* out) const = 0;
  // The largest id + 1 (a pass over the data).
  int64_t vocabulary() const;
};

// Bytes of text (vocabulary 256).
std::shared_ptr<const Tokens> byte_tokens(std::vector<uint8_t> bytes);
// A token file, memory-mapped. IoError for a file that is missing, not a
// whole number of uint16, or whose llm.c header disagrees with its size.
std::shared_ptr<const Tokens> map_token_file(const std::string& path);
// Tokens [begin, end) of `base` (sharing it).
std::shared_ptr<const Tokens> token_range(std::shared_ptr<const Tokens> base, int64_t begin,
                                          int64_t end);

// llm.c's header: what map_token_file accepts (for tests and tools).
inline constexpr int32_t kLlmcMagic = 20240520;
inline constexpr int64_t kLlmcHeaderInts = 256;

}  // namespace strata::train
