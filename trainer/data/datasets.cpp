#include "trainer/data/datasets.h"

#include <algorithm>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "trainer/data/dataset.h"
#include "trainer/data/sampler.h"
#include "trainer/data/stream.h"
#include "trainer/data/text.h"

namespace strata::train {
namespace {

LoadedData fashion_mnist(const Recipe& recipe, int rank, int world) {
  const DataSection& d = recipe.data;
  auto train = std::make_shared<const ImageDataset>(
      load_fashion_mnist(d.root, Split::kTrain, d.train_subset));
  const ImageDataset test = load_fashion_mnist(d.root, Split::kTest, d.test_subset);
  LoadedData out;
  out.task = Task::kClassification;
  out.shape = InputShape{train->channels, train->height, train->width, train->classes};
  out.pixel_mean = train->mean;
  out.pixel_std = train->std;
  out.train_samples = train->size;
  out.eval_split = "test";
  const auto [begin, end] = shard_range(test.size, rank, world);
  std::tie(out.eval_inputs, out.eval_targets) = dataset_tensors(test, begin, end);
  out.eval_samples = test.size;
  const LoaderOptions base{d.batch_size, d.prefetch, d.shuffle,
                           static_cast<uint64_t>(recipe.run.seed), 0, 1,
                           d.augment.crop_padding, d.augment.hflip, false};
  out.stream = [train, base](const StreamRequest& r) -> std::unique_ptr<BatchSource> {
    LoaderOptions o = base;
    o.rank = r.rank;
    o.world = r.world;
    o.pin_memory = r.pin_memory;
    return std::make_unique<TrainLoader>(train, o, r.start_batch);
  };
  out.train_rows = [train](const std::vector<int64_t>& indices) {
    return dataset_rows(*train, indices);
  };
  out.train_labels.assign(train->labels.begin(), train->labels.end());
  out.summary = str(out.train_samples, " training / ", out.eval_samples, " test samples");
  return out;
}

// Language modelling over a token sequence: windows of model.seq_len.
LoadedData windows(const Recipe& recipe, std::shared_ptr<const Tokens> train,
                   std::shared_ptr<const Tokens> val, int64_t vocabulary, int rank, int world,
                   const std::string& what) {
  const DataSection& d = recipe.data;
  const int64_t T = recipe.model.seq_len;
  LoadedData out;
  out.task = Task::kLanguageModel;
  out.shape = InputShape{1, 1, 1, vocabulary};
  out.tokens_per_sample = T;
  out.eval_split = "validation";
  out.eval_samples = text_window_count(*val, T);
  if (d.test_subset > 0) out.eval_samples = std::min(out.eval_samples, d.test_subset);
  const auto [begin, end] = shard_range(out.eval_samples, rank, world);
  std::tie(out.eval_inputs, out.eval_targets) = text_windows(*val, T, begin, end);
  out.train_samples = (train->size() - 1) / T;
  TextLoaderOptions base;
  base.batch_size = d.batch_size;
  base.seq_len = T;
  base.seed = static_cast<uint64_t>(recipe.run.seed);
  out.stream = [train, base](const StreamRequest& r) -> std::unique_ptr<BatchSource> {
    TextLoaderOptions o = base;
    o.rank = r.rank;
    o.world = r.world;
    o.batches_per_epoch = r.batches_per_epoch;
    o.pin_memory = r.pin_memory;
    return std::make_unique<TextLoader>(train, o, r.start_batch);
  };
  out.train_rows = [train, T](const std::vector<int64_t>& indices) {
    return text_windows_at(*train, T, indices);
  };
  out.summary = str(out.train_samples, " training / ", out.eval_samples,
                    " validation windows of ", T, " ", what);
  return out;
}

LoadedData text(const Recipe& recipe, int rank, int world) {
  const DataSection& d = recipe.data;
  TextCorpus corpus =
      load_text_corpus(d.text, d.val_fraction, recipe.model.seq_len, d.train_subset);
  return windows(recipe, byte_tokens(std::move(corpus.train)), byte_tokens(std::move(corpus.val)),
                 256, rank, world, "bytes");
}

LoadedData tokens(const Recipe& recipe, int rank, int world) {
  const DataSection& d = recipe.data;
  STRATA_CHECK_T(DataError, !d.tokens.empty(), recipe.where("data.tokens"),
                 "data.name=tokens needs data.tokens: a directory holding train.bin and "
                 "val.bin (uint16 token ids, as nanoGPT's prepare.py or llm.c write)");
  std::shared_ptr<const Tokens> train = map_token_file(join_path(d.tokens, "train.bin"));
  std::shared_ptr<const Tokens> val = map_token_file(join_path(d.tokens, "val.bin"));
  const int64_t T = recipe.model.seq_len;
  STRATA_CHECK_T(DataError, train->size() > T && val->size() > T, recipe.where("data.tokens"),
                 "data.tokens = '", d.tokens, "' holds ", train->size(), " training and ",
                 val->size(), " validation tokens: too few for one window of model.seq_len + 1 "
                 "= ", T + 1, " in each; use more data or a shorter model.seq_len");
  if (d.train_subset > 0) {
    train = token_range(train, 0, std::max(T + 1, std::min(train->size(), d.train_subset)));
  }
  // Every id must index the embedding: one pass over the ids.
  const int64_t seen = std::max(train->vocabulary(), val->vocabulary());
  const int64_t vocabulary = d.vocab_size > 0 ? d.vocab_size : seen;
  STRATA_CHECK_T(DataError, seen <= vocabulary, recipe.where("data.vocab_size"),
                 "data.tokens = '", d.tokens, "' holds token id ", seen - 1,
                 " but data.vocab_size = ", d.vocab_size, "; set data.vocab_size to at least ",
                 seen, " (or 0: the largest id + 1)");
  return windows(recipe, train, val, vocabulary, rank, world, "tokens");
}

}  // namespace

void register_builtin_datasets(DatasetRegistry& registry) {
  registry.add("fashion_mnist", {fashion_mnist, Task::kClassification});
  registry.add("text", {text, Task::kLanguageModel});
  registry.add("tokens", {tokens, Task::kLanguageModel});
  registry.add("syn8", {load_syn8, Task::kClassification});
  registry.add("cd1", {load_cd1, Task::kClassification});
  registry.add("cd2", {load_cd2, Task::kClassification});
  registry.add("fmnist_drift", {load_fmnist_drift, Task::kClassification});
  registry.add("stream_file", {load_stream_file, Task::kClassification});
}

}  // namespace strata::train
