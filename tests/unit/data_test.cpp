// IDX reader, Fashion-MNIST loading, sharded sampling and the loader's
// determinism (the basis of bitwise resume and of data parallelism).
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "test_util.h"
#include "trainer/data/dataset.h"
#include "trainer/data/idx.h"
#include "trainer/data/loader.h"
#include "trainer/data/sampler.h"
#include "trainer/data/text.h"
#include "trainer/data/tokens.h"
#include "trainer/trainer.h"

namespace strata::train {
namespace {

using strata::test::TempDir;

void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  gzclose(f);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

// A tiny 4 x 2 x 3 dataset whose pixel (n, y, x) = 10n + 3y + x.
IdxArray tiny_images() {
  IdxArray a{{4, 2, 3}, {}};
  for (int n = 0; n < 4; ++n)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x) a.data.push_back(10 * n + 3 * y + x);
  return a;
}

TEST(Idx, RoundTripsGzipAndPlain) {
  TempDir dir;
  IdxArray a = tiny_images();
  write_gzip(dir / "a.gz", encode_idx(a));
  strata::test::write_text(dir / "a.idx", encode_idx(a));
  for (const char* name : {"a.gz", "a.idx"}) {
    IdxArray b = read_idx(dir / name);
    EXPECT_EQ(b.dims, a.dims);
    EXPECT_EQ(b.data, a.data);
  }
}

TEST(Idx, TruncatedAndForeignFilesAreClearErrors) {
  TempDir dir;
  std::string bytes = encode_idx(tiny_images());
  write_gzip(dir / "short.gz", bytes.substr(0, bytes.size() - 5));
  EXPECT_NE(message_of([&] { read_idx(dir / "short.gz"); })
                .find("holds 19 data bytes but its header promises 24"),
            std::string::npos);
  strata::test::write_text(dir / "text.idx", "hello world");
  EXPECT_NE(message_of([&] { read_idx(dir / "text.idx"); })
                .find("is not an IDX file"),
            std::string::npos);
  EXPECT_NE(message_of([&] { read_idx(dir / "missing.gz"); })
                .find("does not exist"),
            std::string::npos);
}

TEST(FashionMnist, MissingDatasetNamesTheDebianPackage) {
  TempDir dir;
  std::string e = message_of(
      [&] { load_fashion_mnist(dir.path(), Split::kTrain); });
  EXPECT_NE(e.find("apt-get install dataset-fashion-mnist"), std::string::npos)
      << e;
}

TEST(FashionMnist, RealDatasetHasTheKnownShape) {
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!path_exists(root)) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ImageDataset train = load_fashion_mnist(root, Split::kTrain);
  ImageDataset test = load_fashion_mnist(root, Split::kTest, 500);
  EXPECT_EQ(train.size, 60000);
  EXPECT_EQ(test.size, 500);
  EXPECT_EQ(train.height, 28);
  EXPECT_EQ(train.width, 28);
  std::vector<int> per_class(10);
  for (uint8_t y : train.labels) per_class[y]++;
  for (int c : per_class) EXPECT_EQ(c, 6000);  // balanced by construction
}

class SamplerWorld : public ::testing::TestWithParam<int> {};

TEST_P(SamplerWorld, ShardsAreDisjointEqualAndReshuffled) {
  const int world = GetParam();
  const int64_t n = 103;
  std::set<int64_t> seen;
  std::vector<int64_t> epoch1_rank0;
  for (int rank = 0; rank < world; ++rank) {
    ShardedSampler s({n, rank, world, /*shuffle=*/true, /*seed=*/42});
    auto idx = s.epoch_indices(0);
    EXPECT_EQ(static_cast<int64_t>(idx.size()), n / world);
    for (int64_t i : idx) {
      EXPECT_TRUE(seen.insert(i).second) << "sample " << i << " read twice";
      EXPECT_TRUE(0 <= i && i < n);
    }
    EXPECT_EQ(idx, s.epoch_indices(0));  // pure function of (seed, epoch)
    if (rank == 0) epoch1_rank0 = s.epoch_indices(1);
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), n - n % world);
  ShardedSampler r0({n, 0, world, true, 42});
  EXPECT_NE(epoch1_rank0, r0.epoch_indices(0));
}

INSTANTIATE_TEST_SUITE_P(Worlds, SamplerWorld, ::testing::Values(1, 2, 3, 4, 7));

TEST(Sampler, UnshuffledIsInOrder) {
  ShardedSampler s({10, 1, 2, /*shuffle=*/false, 0});
  EXPECT_EQ(s.epoch_indices(5), (std::vector<int64_t>{1, 3, 5, 7, 9}));
}

TEST(Sampler, EvalShardsCoverEverySampleOnce) {
  for (int world = 1; world <= 5; ++world) {
    int64_t next = 0;
    for (int rank = 0; rank < world; ++rank) {
      auto [b, e] = shard_range(23, rank, world);
      EXPECT_EQ(b, next);
      EXPECT_LE(e - b, 23 / world + 1);
      next = e;
    }
    EXPECT_EQ(next, 23);
  }
}

std::shared_ptr<ImageDataset> synthetic(int64_t n) {
  auto d = std::make_shared<ImageDataset>();
  d->size = n;
  d->height = 6;
  d->width = 5;
  d->classes = 10;
  d->mean = 0.5f;
  d->std = 0.25f;
  for (int64_t i = 0; i < n * 30; ++i) d->pixels.push_back((i * 37) % 256);
  for (int64_t i = 0; i < n; ++i) d->labels.push_back(i % 10);
  return d;
}

TEST(Loader, StartingMidStreamGivesTheSameBatches) {
  auto d = synthetic(50);
  LoaderOptions o;
  o.batch_size = 8;
  o.prefetch = 3;
  o.seed = 9;
  o.crop_padding = 2;
  o.hflip = true;
  TrainLoader from_start(d, o, 0);
  std::vector<Batch> all;
  for (int i = 0; i < 20; ++i) all.push_back(from_start.next());  // 3+ epochs
  EXPECT_EQ(from_start.batches_per_epoch(), 6);
  o.prefetch = 1;  // prefetch depth must not matter
  TrainLoader resumed(d, o, 13);
  for (int i = 13; i < 20; ++i) {
    Batch b = resumed.next();
    EXPECT_EQ(b.epoch, all[i].epoch);
    EXPECT_EQ(b.index, all[i].index);
    EXPECT_TRUE(at::equal(b.inputs, all[i].inputs)) << "batch " << i;
    EXPECT_TRUE(at::equal(b.targets, all[i].targets)) << "batch " << i;
  }
  EXPECT_EQ(all[6].epoch, 1);
  EXPECT_EQ(all[6].index, 0);
}

TEST(Loader, NormalisesWithoutAugmentation) {
  auto d = synthetic(4);
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  TrainLoader loader(d, o, 0);
  Batch b = loader.next();
  at::Tensor raw = at::tensor(std::vector<float>(d->pixels.begin(),
                                                 d->pixels.end()))
                       .view({4, 1, 6, 5});
  EXPECT_TRUE(at::allclose(b.inputs, (raw / 255.f - 0.5f) / 0.25f, 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(b.targets, at::arange(4, at::kLong)));
}

TEST(Loader, AugmentationKeepsPixelsAndShiftsThem) {
  auto d = synthetic(16);
  LoaderOptions o;
  o.batch_size = 16;
  o.shuffle = false;
  o.crop_padding = 1;
  TrainLoader aug(d, o, 0);
  o.crop_padding = 0;
  TrainLoader plain(d, o, 0);
  at::Tensor a = aug.next().inputs, p = plain.next().inputs;
  EXPECT_FALSE(at::equal(a, p));  // 16 samples cannot all draw offset (0, 0)
  // Every augmented value is an original pixel or zero padding.
  const float pad = (0.f - 0.5f) / 0.25f;
  auto allowed = p.flatten().contiguous();
  std::vector<float> values(allowed.data_ptr<float>(),
                            allowed.data_ptr<float>() + allowed.numel());
  values.push_back(pad);
  auto af = a.flatten().contiguous();
  for (int64_t i = 0; i < af.numel(); ++i) {
    float v = af.data_ptr<float>()[i];
    ASSERT_TRUE(std::any_of(values.begin(), values.end(),
                            [&](float x) { return std::abs(x - v) < 1e-6; }));
  }
}

TEST(Loader, BatchLargerThanShardIsAConfigError) {
  LoaderOptions o;
  o.batch_size = 64;
  std::string e = message_of([&] { TrainLoader(synthetic(10), o, 0); });
  EXPECT_NE(e.find("data.batch_size=64 is larger than the 10 training samples"),
            std::string::npos) << e;
}

// Writes uint16 ids, raw (nanoGPT) or behind llm.c's header.
void write_tokens(const std::string& path, const std::vector<uint16_t>& ids, bool llmc,
                  int32_t count_override = -1) {
  std::string bytes;
  if (llmc) {
    std::vector<int32_t> header(kLlmcHeaderInts, 0);
    header[0] = kLlmcMagic;
    header[1] = 1;
    header[2] = count_override >= 0 ? count_override : static_cast<int32_t>(ids.size());
    bytes.append(reinterpret_cast<const char*>(header.data()), header.size() * 4);
  }
  bytes.append(reinterpret_cast<const char*>(ids.data()), ids.size() * 2);
  strata::test::write_text(path, bytes);
}

TEST(TokenFile, RawAndLlmcLayoutsReadTheSameIds) {
  TempDir dir;
  std::vector<uint16_t> ids;
  for (int i = 0; i < 3000; ++i) ids.push_back(static_cast<uint16_t>((i * 7919) % 50257));
  write_tokens(dir / "raw.bin", ids, false);
  write_tokens(dir / "llmc.bin", ids, true);
  for (const char* f : {"raw.bin", "llmc.bin"}) {
    auto t = map_token_file(dir / f);
    ASSERT_EQ(t->size(), 3000) << f;
    std::vector<int64_t> out(5);
    t->copy(2995, 5, out.data());
    for (int i = 0; i < 5; ++i) EXPECT_EQ(out[i], ids[2995 + i]) << f;
    EXPECT_EQ(t->vocabulary(), *std::max_element(ids.begin(), ids.end()) + 1) << f;
  }
}

TEST(TokenFile, TruncatedOrOddFilesAreIoErrors) {
  TempDir dir;
  write_tokens(dir / "short.bin", {1, 2, 3}, true, 10);  // header says 10 tokens
  EXPECT_THROW(map_token_file(dir / "short.bin"), IoError);
  strata::test::write_text(dir / "odd.bin", "abc");
  EXPECT_THROW(map_token_file(dir / "odd.bin"), IoError);
  EXPECT_THROW(map_token_file(dir / "missing.bin"), IoError);
}

// The tokens dataset over the bytes of a text gives exactly the text
// dataset's windows, evaluation split and stream.
TEST(Datasets, TokensOfATextAreThatText) {
  TempDir dir;
  std::string body;
  for (int i = 0; i < 4000; ++i) body += static_cast<char>('a' + (i * 31 + i / 7) % 26);
  strata::test::write_text(dir / "corpus.txt", body);
  const std::string seq = "model.seq_len=16";
  const Recipe as_text = parse_recipe("", "r.yaml", {"data.name=text", "data.text=" + dir / "corpus.txt", seq});
  const TextCorpus corpus = load_text_corpus(dir / "corpus.txt", as_text.data.val_fraction, 16);
  make_dirs(dir / "tok");
  write_tokens(dir / "tok/train.bin", std::vector<uint16_t>(corpus.train.begin(), corpus.train.end()), false);
  write_tokens(dir / "tok/val.bin", std::vector<uint16_t>(corpus.val.begin(), corpus.val.end()), true);
  const Recipe as_tokens = parse_recipe("", "r.yaml", {"data.name=tokens", "data.tokens=" + dir / "tok",
                                                       "data.vocab_size=256", seq});
  const Registries reg = builtin_registries();
  for (int rank : {0, 1}) {
    LoadedData a = reg.datasets.get("text", "", "").load(as_text, rank, 2);
    LoadedData b = reg.datasets.get("tokens", "", "").load(as_tokens, rank, 2);
    EXPECT_EQ(a.shape.classes, b.shape.classes);
    EXPECT_EQ(a.train_samples, b.train_samples);
    EXPECT_EQ(a.eval_samples, b.eval_samples);
    EXPECT_TRUE(at::equal(a.eval_inputs, b.eval_inputs)) << rank;
    EXPECT_TRUE(at::equal(a.eval_targets, b.eval_targets)) << rank;
    auto sa = a.stream(StreamRequest{rank, 2, 10, 3, false});
    auto sb = b.stream(StreamRequest{rank, 2, 10, 3, false});
    for (int i = 0; i < 3; ++i) {
      const Batch x = sa->next(), y = sb->next();
      EXPECT_TRUE(at::equal(x.inputs, y.inputs) && at::equal(x.targets, y.targets)) << i;
    }
  }
  // An id beyond data.vocab_size is a data error with the fix.
  const Recipe small = parse_recipe("", "r.yaml", {"data.name=tokens", "data.tokens=" + dir / "tok",
                                                   "data.vocab_size=100", seq});
  try {
    reg.datasets.get("tokens", "", "").load(small, 0, 1);
    ADD_FAILURE() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("set data.vocab_size to at least"), std::string::npos)
        << e.what();
  }
}

TEST(Datasets, AnUnknownNameListsTheRegisteredOnes) {
  const Registries reg = builtin_registries();
  try {
    reg.datasets.get("fashion_mnst", "r.yaml:3: ", "data.name");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("did you mean 'fashion_mnist'"), std::string::npos) << m;
    EXPECT_NE(m.find("tokens"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace strata::train
