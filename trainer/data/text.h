// Byte-level text for language modelling.
//
// A corpus is one text file, or every regular file of a directory (sorted
// by name; symbolic links and fortune's *.dat indexes skipped) joined with
// newlines. Tokens are bytes (vocabulary 256). The last `val_fraction` of the
// bytes is the validation split, so no validation window overlaps training
// text.
//
// Windows work on any token sequence (trainer/data/tokens.h): the bytes of
// a text, or a memory-mapped token file.
//
// Training windows: micro-batch g of rank r holds B windows of T + 1 tokens
// (inputs are the first T, targets the last T); window i starts at a
// position drawn from Rng(mix_seed(seed, g, r * B + i)) -- a pure function
// of (seed, g, rank, i), so a resumed run sees exactly the windows the
// uninterrupted run saw (Note [Deterministic data] in core/random.h). An
// "epoch" is as many windows as fit the training text end to end.
//
// Shape legend: B batch, T sequence length.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/data/loader.h"
#include "trainer/data/tokens.h"

namespace strata::train {

struct TextCorpus {
  std::vector<uint8_t> train;
  std::vector<uint8_t> val;
  int64_t files = 0;  // files read
};

// Throws DataError naming the path and the fix (missing, empty, too short
// for one window in either split).
TextCorpus load_text_corpus(const std::string& path, double val_fraction,
                            int64_t seq_len, int64_t train_limit = 0);

struct TextLoaderOptions {
  int64_t batch_size = 16;  // B
  int64_t seq_len = 128;    // T
  uint64_t seed = 0;
  int rank = 0;
  int world = 1;
  int64_t batches_per_epoch = 1;  // for Batch::epoch
  bool pin_memory = false;
};

class TextLoader final : public BatchSource {
 public:
  TextLoader(std::shared_ptr<const Tokens> tokens, TextLoaderOptions options,
             int64_t start_batch);
  // inputs, targets: int64 [B, T].
  Batch next() override;

 private:
  std::shared_ptr<const Tokens> tokens_;
  TextLoaderOptions options_;
  int64_t g_;  // next global micro-batch
};

// Non-overlapping evaluation windows [begin, end) of `tokens` as int64
// inputs/targets [N, T]; text_window_count says how many there are.
int64_t text_window_count(const Tokens& tokens, int64_t seq_len);
std::pair<at::Tensor, at::Tensor> text_windows(const Tokens& tokens, int64_t seq_len,
                                               int64_t begin, int64_t end);
// The same for the windows at `indices`, in that order.
std::pair<at::Tensor, at::Tensor> text_windows_at(const Tokens& tokens, int64_t seq_len,
                                                  const std::vector<int64_t>& indices);

}  // namespace strata::train
