// The GPT model and byte-level text data.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "core/error.h"
#include "test_util.h"
#include "trainer/data/text.h"
#include "trainer/models/gpt.h"

namespace strata::train {
namespace {

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

ModelSection tiny(int64_t layers = 2, int64_t heads = 2, int64_t width = 16, int64_t seq = 12) {
  ModelSection c;
  c.name = "gpt";
  c.n_layer = layers;
  c.n_head = heads;
  c.d_model = width;
  c.seq_len = seq;
  return c;
}

TEST(TextCorpus, JoinsADirectorysFilesSkippingIndexesAndLinks) {
  test::TempDir dir;
  write(dir / "b", std::string(50, 'b'));
  write(dir / "a", std::string(50, 'a'));
  write(dir / "a.dat", "index");
  ASSERT_EQ(::symlink((dir / "a").c_str(), (dir / "a.u8").c_str()), 0);
  TextCorpus c = load_text_corpus(dir.path(), 0.2, 8);
  EXPECT_EQ(c.files, 2);
  const std::string all = std::string(50, 'a') + "\n" + std::string(50, 'b');
  ASSERT_EQ(c.train.size() + c.val.size(), all.size());
  EXPECT_EQ(c.val.size(), 20u);  // the last 20% of 101 bytes
  EXPECT_EQ(std::string(c.train.begin(), c.train.end()) + std::string(c.val.begin(), c.val.end()), all);
}

TEST(TextCorpus, MissingOrTooShortTextSaysWhatToDo) {
  test::TempDir dir;
  try {
    load_text_corpus(dir / "nope", 0.1, 8);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("apt-get install fortunes"), std::string::npos) << e.what();
  }
  write(dir / "short.txt", "0123456789");
  try {
    load_text_corpus(dir / "short.txt", 0.5, 8);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("shorter model.seq_len"), std::string::npos) << e.what();
  }
}

TEST(TextLoader, TargetsAreInputsShiftedAndBatchesAreAFunctionOfTheirIndex) {
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 1000; ++i) bytes.push_back(static_cast<uint8_t>(i % 251));
  const auto text = byte_tokens(bytes);
  TextLoaderOptions o;
  o.batch_size = 4;
  o.seq_len = 16;
  o.seed = 3;
  o.batches_per_epoch = 10;
  TextLoader from_start(text, o, 0);
  std::vector<Batch> first;
  for (int i = 0; i < 8; ++i) first.push_back(from_start.next());
  const Batch& b = first[0];
  ASSERT_EQ(b.inputs.sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_TRUE(at::equal(b.inputs.slice(1, 1), b.targets.slice(1, 0, 15)));
  // Consecutive bytes of the text: target = (input + 1) mod 251.
  EXPECT_TRUE(at::equal(b.targets, (b.inputs + 1).remainder(251)));
  TextLoader resumed(text, o, 5);  // a resumed run sees the same windows
  for (int i = 5; i < 8; ++i) {
    Batch r = resumed.next();
    EXPECT_TRUE(at::equal(r.inputs, first[i].inputs)) << i;
    EXPECT_EQ(r.index, i % 10);
  }
  o.rank = 1;
  o.world = 2;
  TextLoader other_rank(text, o, 0);
  EXPECT_FALSE(at::equal(other_rank.next().inputs, first[0].inputs));
}

TEST(TextWindows, AreConsecutiveAndDoNotOverlap) {
  std::vector<uint8_t> bytes(101);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
  const auto text = byte_tokens(bytes);
  EXPECT_EQ(text_window_count(*text, 10), 10);
  auto [x, y] = text_windows(*text, 10, 2, 5);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_EQ(x[0][0].item<int64_t>(), 20);
  EXPECT_EQ(y[2][9].item<int64_t>(), 50);
}

TEST(Gpt, LogitsShapeNamesAndTiedOutput) {
  torch::manual_seed(0);
  auto m = make_gpt(tiny(), InputShape{1, 1, 1, 256});
  at::Tensor logits = m->forward(at::randint(0, 256, {3, 12}).to(at::kLong));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 12, 256}));
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) names.insert(p.key());
  for (const char* n : {"wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
                        "h.0.attn.c_proj.bias", "h.1.ln_2.bias", "h.1.mlp.c_fc.weight",
                        "h.1.mlp.c_proj.weight", "ln_f.weight"}) {
    EXPECT_EQ(names.count(n), 1u) << n;
  }
  // Tied: no separate output matrix. V C + T C + L (12 C^2 + 13 C) + 2 C.
  const int64_t C = 16, L = 2, V = 256, T = 12;
  EXPECT_EQ(parameter_count(*m), V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C);
}

TEST(Gpt, IsCausal) {
  torch::manual_seed(0);
  auto m = make_gpt(tiny(), InputShape{1, 1, 1, 256});
  m->eval();
  at::Tensor x = at::randint(0, 256, {2, 12}).to(at::kLong);
  at::Tensor y = x.clone();
  y.index_put_({at::indexing::Slice(), 7}, (x.index({at::indexing::Slice(), 7}) + 1) % 256);
  at::Tensor a = m->forward(x), b = m->forward(y);
  EXPECT_TRUE(at::allclose(a.slice(1, 0, 7), b.slice(1, 0, 7), 1e-5, 1e-6));  // past unchanged
  EXPECT_FALSE(at::allclose(a.slice(1, 7), b.slice(1, 7)));                  // future sees it
}

TEST(Gpt, CausalAttentionMatchesTheExplicitFormula) {
  torch::manual_seed(1);
  at::Tensor q = at::randn({2, 3, 5, 4}), k = at::randn({2, 3, 5, 4}), v = at::randn({2, 3, 5, 4});
  at::Tensor att = at::matmul(q, k.transpose(-2, -1)) / 2.0;
  att = att.masked_fill(at::ones({5, 5}, at::kBool).triu(1), -INFINITY).softmax(-1);
  EXPECT_TRUE(at::allclose(causal_attention(q, k, v, 0.0, true), at::matmul(att, v), 1e-5, 1e-6));
}

TEST(Gpt, Gpt2Initialisation) {
  torch::manual_seed(0);
  ModelSection c = tiny(8, 4, 256, 16);
  auto m = make_gpt(c, InputShape{1, 1, 1, 256});
  for (const auto& p : m->named_parameters()) {
    const std::string& n = p.key();
    const double sd = p.value().std().item<double>();
    if (n == "h.0.mlp.c_proj.weight") EXPECT_NEAR(sd, 0.02 / std::sqrt(16.0), 5e-4) << n;
    if (n == "h.0.attn.c_attn.weight") EXPECT_NEAR(sd, 0.02, 5e-4) << n;
    if (n == "h.0.attn.c_attn.bias") EXPECT_EQ(p.value().abs().sum().item<double>(), 0.0);
    if (n == "h.0.ln_1.weight") EXPECT_TRUE(at::equal(p.value(), at::ones_like(p.value())));
  }
}

TEST(Gpt, BadShapesAreRecipeErrors) {
  EXPECT_THROW(make_gpt(tiny(2, 3, 16), InputShape{1, 1, 1, 256}), ConfigError);  // 16 % 3
  ModelSection small_vocab = tiny();
  small_vocab.vocab_size = 100;
  EXPECT_THROW(make_gpt(small_vocab, InputShape{1, 1, 1, 256}), ConfigError);
  auto m = make_gpt(tiny(), InputShape{1, 1, 1, 256});
  EXPECT_THROW(m->forward(at::zeros({1, 13}, at::kLong)), Error);  // longer than seq_len
}

}  // namespace
}  // namespace strata::train
