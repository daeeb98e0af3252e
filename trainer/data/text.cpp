#include "trainer/data/text.h"

#include <sys/stat.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/fs.h"
#include "core/random.h"

namespace strata::train {
namespace {

bool is_regular_file(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TextCorpus load_text_corpus(const std::string& path, double val_fraction,
                            int64_t seq_len, int64_t train_limit) {
  STRATA_CHECK_T(DataError, path_exists(path), "data.text = '", path,
                 "' does not exist; install Debian's fortunes package "
                 "(apt-get install fortunes) or point data.text at a text file");
  std::vector<std::string> files;
  if (is_directory(path)) {
    std::vector<std::string> names = list_files(path);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      const std::string f = join_path(path, n);
      if (!ends_with(n, ".dat") && is_regular_file(f)) files.push_back(f);
    }
  } else {
    files.push_back(path);
  }
  std::string all;
  for (const auto& f : files) {
    if (!all.empty()) all += '\n';
    all += read_file(f);
  }
  TextCorpus c;
  c.files = static_cast<int64_t>(files.size());
  const int64_t n = static_cast<int64_t>(all.size());
  const int64_t n_val = static_cast<int64_t>(static_cast<double>(n) * val_fraction);
  int64_t n_train = n - n_val;
  STRATA_CHECK_T(DataError, n_val >= seq_len + 1 && n_train >= seq_len + 1, "data.text = '",
                 path, "' holds ", n, " bytes in ", files.size(), " file(s): too few for ",
                 "windows of model.seq_len + 1 = ", seq_len + 1, " bytes in both the "
                 "training and the validation split (data.val_fraction = ", val_fraction,
                 "); use more text or a shorter model.seq_len");
  if (train_limit > 0) n_train = std::max(seq_len + 1, std::min(n_train, train_limit));
  c.train.assign(all.begin(), all.begin() + n_train);
  c.val.assign(all.end() - n_val, all.end());
  return c;
}

TextLoader::TextLoader(std::shared_ptr<const Tokens> tokens, TextLoaderOptions options,
                       int64_t start_batch)
    : tokens_(std::move(tokens)), options_(options), g_(start_batch) {
  STRATA_INTERNAL_ASSERT(tokens_->size() > options_.seq_len);
}

Batch TextLoader::next() {
  const int64_t B = options_.batch_size, T = options_.seq_len;
  const auto opts = at::TensorOptions(at::kLong).pinned_memory(options_.pin_memory);
  Batch b;
  b.epoch = g_ / std::max<int64_t>(1, options_.batches_per_epoch);
  b.index = g_ % std::max<int64_t>(1, options_.batches_per_epoch);
  b.inputs = at::empty({B, T}, opts);
  b.targets = at::empty({B, T}, opts);
  int64_t* x = b.inputs.data_ptr<int64_t>();
  int64_t* y = b.targets.data_ptr<int64_t>();
  const uint64_t starts = static_cast<uint64_t>(tokens_->size() - T);  // [0, n - T - 1]
  for (int64_t i = 0; i < B; ++i) {
    Rng rng(mix_seed(options_.seed, static_cast<uint64_t>(g_),
                     static_cast<uint64_t>(options_.rank * B + i)));
    const auto start = static_cast<int64_t>(rng.below(starts));
    tokens_->copy(start, T, x + i * T);
    tokens_->copy(start + 1, T, y + i * T);
  }
  ++g_;
  return b;
}

int64_t text_window_count(const Tokens& tokens, int64_t seq_len) {
  return (tokens.size() - 1) / seq_len;
}

std::pair<at::Tensor, at::Tensor> text_windows_at(const Tokens& tokens, int64_t seq_len,
                                                  const std::vector<int64_t>& indices) {
  const int64_t n = static_cast<int64_t>(indices.size()), T = seq_len;
  const int64_t count = text_window_count(tokens, seq_len);
  at::Tensor x = at::empty({n, T}, at::kLong), y = at::empty({n, T}, at::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t w = indices[static_cast<size_t>(i)];
    STRATA_INTERNAL_ASSERT(0 <= w && w < count, "window ", w, " of ", count);
    tokens.copy(w * T, T, x.data_ptr<int64_t>() + i * T);
    tokens.copy(w * T + 1, T, y.data_ptr<int64_t>() + i * T);
  }
  return {x, y};
}

std::pair<at::Tensor, at::Tensor> text_windows(const Tokens& tokens, int64_t seq_len,
                                               int64_t begin, int64_t end) {
  STRATA_INTERNAL_ASSERT(0 <= begin && begin <= end &&
                         end <= text_window_count(tokens, seq_len));
  std::vector<int64_t> indices(static_cast<size_t>(end - begin));
  std::iota(indices.begin(), indices.end(), begin);
  return text_windows_at(tokens, seq_len, indices);
}

}  // namespace strata::train
