// Checkpoint round trip, retention, atomicity leftovers, mismatch errors and
// the torch.load-compatible model.pt; the JSON of checkpoint metadata and
// metrics.jsonl.
#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fs.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_meta.h"
#include "trainer/metrics.h"
#include "trainer/safetensors.h"
#include "trainer/tensorboard.h"
#include "trainer/trainer.h"

namespace strata::train {
namespace {

using strata::test::TempDir;

struct Rig {
  std::shared_ptr<Model> model;
  std::unique_ptr<torch::optim::Optimizer> opt;
  OptimizerStateCodec codec;
  Trained trained(torch::nn::Module* extra = nullptr) {
    return Trained{*model, *opt, codec, extra};
  }
};

Rig make(const std::string& model_name, uint64_t seed) {
  Registries reg = builtin_registries();
  Recipe r = parse_recipe("model: {name: " + model_name + ", dropout: 0.5}\n"
                          "optimizer: {name: sgd, momentum: 0.9}\n",
                          "c.yaml");
  torch::manual_seed(seed);
  Rig s;
  s.model = reg.models.get(model_name, "", "").build(r.model, InputShape{}, {});
  const OptimizerSpec& sgd = reg.optimizers.get("sgd", "", "");
  s.opt = sgd.make(r, *s.model);
  s.codec = sgd.state;
  return s;
}

void train_steps(Rig& s, int steps) {
  for (int i = 0; i < steps; ++i) {
    s.opt->zero_grad();
    at::Tensor x = torch::randn({4, 1, 28, 28});
    s.model->forward(x).pow(2).mean().backward();  // dropout draws from RNG
    s.opt->step();
  }
}

std::vector<at::Tensor> state_of(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  for (auto& b : m.buffers()) out.push_back(b.detach().clone());
  return out;
}

TEST(Checkpoint, ResumedTrainingIsBitwiseIdentical) {
  TempDir dir;
  Rig a = make("cnn", 1);
  train_steps(a, 3);
  CheckpointStore store(dir / "ckpt", 2);
  store.save_and_publish({3, 12}, a.trained());
  train_steps(a, 3);  // momentum, BN statistics and dropout all advance

  Rig b = make("cnn", 99);  // different initial weights and RNG
  TrainState st = load_checkpoint(store.newest(), {}, b.trained());
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(st.micro_batches, 12);
  train_steps(b, 3);
  auto sa = state_of(*a.model), sb = state_of(*b.model);
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(at::equal(sa[i], sb[i])) << i;
}

TEST(Checkpoint, CarriesAnExtraModuleOnlyWhenAskedTo) {
  TempDir dir;
  Rig a = make("mlp", 1);
  torch::manual_seed(5);
  torch::nn::Linear extra(3, 2);
  CheckpointStore store(dir / "ckpt", 2);
  store.save_and_publish({1, 1}, a.trained(extra.get()));
  Rig b = make("mlp", 1);
  torch::manual_seed(6);
  torch::nn::Linear other(3, 2);
  ASSERT_FALSE(at::equal(extra->weight, other->weight));
  load_checkpoint(store.newest(), {}, b.trained(other.get()));
  EXPECT_TRUE(at::equal(extra->weight, other->weight));
  EXPECT_TRUE(at::equal(extra->bias, other->bias));
  // A checkpoint without one cannot restore one: the recipe changed.
  store.save_and_publish({2, 2}, a.trained());
  EXPECT_THROW(load_checkpoint(store.newest(), {}, b.trained(other.get())),
               ConfigError);
}

// Note [Complete checkpoints]: a shard cut short after metadata.json was
// written (a copy that stopped, a disk that lost the tail) makes the newest
// checkpoint incomplete, and the one before it is resumed.
TEST(Checkpoint, ACheckpointCutShortIsSkippedForThePreviousCompleteOne) {
  TempDir dir;
  Rig a = make("mlp", 1);
  CheckpointStore store(dir / "ckpt", 3);
  for (int64_t step : {10, 20}) store.save_and_publish({step, step}, a.trained());
  ASSERT_EQ(store.newest(), dir / "ckpt/step_00000020");
  EXPECT_NE(read_file(dir / "ckpt/step_00000020/metadata.json").find("\"model-pp0-tp0.pt\":"),
            std::string::npos);
  const std::string shard = dir / "ckpt/step_00000020/model-pp0-tp0.pt";
  const std::string bytes = read_file(shard);
  strata::test::write_text(shard, bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(incomplete_checkpoint(dir / "ckpt/step_00000020").find("model-pp0-tp0.pt has "),
            std::string::npos);
  EXPECT_EQ(store.newest(), dir / "ckpt/step_00000010");
  std::filesystem::remove(dir / "ckpt/step_00000010/optim-pp0-tp0.pt");
  EXPECT_EQ(incomplete_checkpoint(dir / "ckpt/step_00000010"), "optim-pp0-tp0.pt is missing");
  EXPECT_EQ(store.newest(), "");
}

TEST(Checkpoint, KeepsTheNewestAndIgnoresTemporaries) {
  TempDir dir;
  Rig a = make("mlp", 1);
  CheckpointStore store(dir / "ckpt", 2);
  for (int64_t step : {10, 20, 30}) store.save_and_publish({step, step}, a.trained());
  strata::test::write_text(dir / "ckpt/.step_00000040.pt.tmp.123", "torn");
  // A directory without metadata.json (a save cut short) is not a checkpoint.
  std::filesystem::create_directories(dir / "ckpt/step_00000050");
  auto all = store.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0], dir / "ckpt/step_00000020");
  EXPECT_EQ(store.newest(), dir / "ckpt/step_00000030");
}

TEST(Checkpoint, WrongModelIsAConfigErrorWithTheFix) {
  TempDir dir;
  Rig a = make("mlp", 1);
  CheckpointStore store(dir / "ckpt", 1);
  store.save_and_publish({1, 1}, a.trained());
  Rig b = make("cnn", 1);
  try {
    load_checkpoint(store.newest(), {}, b.trained());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match this recipe's model"),
              std::string::npos) << e.what();
  }
}

TEST(Checkpoint, CorruptFileIsAnIoError) {
  TempDir dir;
  strata::test::write_text(dir / "step_00000001.pt", "not a checkpoint");
  Rig a = make("mlp", 1);
  EXPECT_THROW(load_checkpoint(dir / "step_00000001.pt", {}, a.trained()), IoError);
}

TEST(StateDict, IsAPickledDictOfEveryParameterAndBuffer) {
  TempDir dir;
  Rig a = make("cnn", 1);
  save_state_dict(dir / "model.pt", *a.model);
  std::string bytes = read_file(dir / "model.pt");
  c10::IValue v = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  ASSERT_TRUE(v.isGenericDict());
  auto dict = v.toGenericDict();
  EXPECT_EQ(dict.size(), a.model->named_parameters().size() +
                             a.model->named_buffers().size());
  for (const auto& p : a.model->named_parameters()) {
    EXPECT_TRUE(at::equal(dict.at(p.key()).toTensor(), p.value())) << p.key();
  }
  EXPECT_TRUE(dict.contains("features.1.running_mean"));
}

// Sharded checkpoints' text files are read as JSON (whitespace, key order
// and escapes as any writer has them), every field checked.
TEST(CheckpointMeta, IsReadAsJsonAndChecked) {
  const CheckpointMeta m =
      parse_checkpoint_metadata("{ \"step\" : 7,\n \"pp\": 2, \"tp\" :4, \"dp\":1, \"format\": 2 }",
                                "m.json");
  EXPECT_EQ(m.format, 2);
  EXPECT_EQ(m.tp, 4);
  EXPECT_EQ(m.pp, 2);
  const auto error = [](const std::string& text) {
    try {
      parse_checkpoint_metadata(text, "m.json");
    } catch (const IoError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error("{\"format\": 2, \"dp\": 1, \"tp\": 1").find("m.json: not valid JSON"),
            std::string::npos);
  EXPECT_NE(error("[1, 2]").find("m.json: not a JSON object"), std::string::npos);
  EXPECT_NE(error("{\"format\": 2, \"dp\": 1, \"tp\": 0, \"pp\": 1}")
                .find("m.json: tp is 0, not an integer in [1, 65536]"),
            std::string::npos);
  EXPECT_NE(error("{\"format\": 2, \"dp\": 1.5, \"tp\": 1, \"pp\": 1}").find("dp is 1.5"),
            std::string::npos);
  EXPECT_NE(error("{\"format\": 2, \"tp\": 1, \"pp\": 1}").find("m.json has no 'dp'"),
            std::string::npos);
  // A key that only appears inside a string value is not the key.
  EXPECT_NE(error("{\"note\": \"\\\"dp\\\":1\", \"format\": 2, \"tp\": 1, \"pp\": 1}")
                .find("has no 'dp'"),
            std::string::npos);
  const SplitTable t = parse_split_table("{\"net.0.weight\": \"0/4\", \"a\\\"b\": \"1/2\"}", "s.json");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t.at("net.0.weight").groups, 4);
  EXPECT_EQ(t.at("a\"b").dim, 1);
  EXPECT_THROW(parse_split_table("{\"w\": \"9/2\"}", "s.json"), IoError);
  EXPECT_THROW(parse_split_table("{\"w\": 3}", "s.json"), IoError);
}

TEST(Metrics, RecordsAreJsonAndARewindDropsATornLine) {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  {
    MetricsWriter w(path, true);
    w.write(JsonObject().add("kind", "train").add("step", 5).add("loss", 0.25).add("note", "a\"b\n"));
    w.write(JsonObject().add("kind", "eval").add("step", 10).add("loss", std::nan("")));
    w.write(JsonObject().add("kind", "train").add("step", 15).add("loss", 0.125));
  }
  const auto lines = strata::test::read_lines(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "{\"kind\":\"train\",\"step\":5,\"loss\":0.25,\"note\":\"a\\\"b\\n\"}");
  EXPECT_EQ(strata::test::json_text(lines[0], "note"), "a\"b\n");
  EXPECT_EQ(strata::test::json_text(lines[1], "loss"), "null");  // NaN
  // A crash cut the last line short; resuming at step 10 keeps 5 and 10.
  std::ofstream(path, std::ios::app) << "{\"kind\":\"train\",\"st";
  MetricsWriter::rewind(path, 10);
  const auto kept = strata::test::read_lines(path);
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[1], lines[1]);
}

// The status line fits the terminal: at 80 columns everything with a bar,
// narrower terminals drop the bar, then fields from the right; never wider
// than the terminal less one column (writing the last one wraps some).
TEST(Progress, TheLineFitsTheTerminal) {
  ProgressOptions o;
  o.total_steps = 1200;
  o.interactive = true;
  Progress p(o);
  ProgressState s{300, 2, 0.66071, 0.05, 27700.0, 65.0};
  const std::string wide = p.line(s, 120);
  EXPECT_EQ(wide.rfind("300/1200 [##########..............................]", 0), 0u) << wide;
  for (const char* part : {"loss 0.6607", "27.7k samples/s", "1m05s<3m15s", "lr 0.05", "epoch 2"}) {
    EXPECT_NE(wide.find(part), std::string::npos) << part << " in " << wide;
  }
  // 80 columns: the bar stays, the last fields go.
  const std::string eighty = p.line(s, 80);
  EXPECT_LE(eighty.size(), 79u) << eighty;
  EXPECT_EQ(eighty.rfind("300/1200 [", 0), 0u) << eighty;
  EXPECT_NE(eighty.find("1m05s<3m15s"), std::string::npos) << eighty;
  EXPECT_EQ(eighty.find("epoch"), std::string::npos) << eighty;
  // 30 columns: no room for a bar next to the loss.
  const std::string narrow = p.line(s, 30);
  EXPECT_LE(narrow.size(), 29u) << narrow;
  EXPECT_EQ(narrow.find('['), std::string::npos) << narrow;
  EXPECT_NE(narrow.find("loss 0.6607"), std::string::npos) << narrow;  // the first field stays
  for (int width : {1, 5, 12, 200}) EXPECT_LE(static_cast<int>(p.line(s, width).size()), std::max(1, width - 1));
  // Before any loss is known.
  ProgressState first{1, 0, std::nan(""), 0.05, 0.0, 0.1};
  EXPECT_NE(p.line(first, 80).find("loss -  - samples/s"), std::string::npos) << p.line(first, 80);
}

TEST(Safetensors, RoundTripsEveryDtypeAndTheMetadata) {
  TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> t = {
      {"w", at::randn({3, 4})},
      {"h", at::randn({5}).to(at::kHalf)},
      {"b", at::randn({2, 2}).to(at::kBFloat16)},
      {"i", at::arange(7, at::kLong)},
      {"u", at::full({3}, 200, at::kByte)},
      {"m", at::arange(4, at::kLong).remainder(2).to(at::kBool)},
      {"scalar", at::tensor(2.5)},
      {"empty", at::empty({0, 3})},
      {"view", at::randn({4, 4}).t()},  // not contiguous
  };
  save_safetensors(dir / "m.safetensors", t, {{"format", "pt"}});
  const SafetensorsFile f = load_safetensors(dir / "m.safetensors");
  ASSERT_EQ(f.tensors.size(), t.size());
  std::map<std::string, at::Tensor> got(f.tensors.begin(), f.tensors.end());
  for (const auto& [name, x] : t) {
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_EQ(got[name].scalar_type(), x.scalar_type()) << name;
    EXPECT_TRUE(at::equal(got[name], x)) << name;
  }
  EXPECT_EQ(f.metadata.at("format"), "pt");
  const std::string bytes = read_file(dir / "m.safetensors");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);  // padded
  EXPECT_THROW(save_safetensors(dir / "x", {{"a", at::zeros({1})}, {"a", at::zeros({1})}}), ConfigError);
  EXPECT_THROW(save_safetensors(dir / "x", {{"c", at::zeros({1}, at::kComplexFloat)}}), ConfigError);
}

// A file from outside: every size, offset and dtype checked against it.
TEST(Safetensors, AHostileFileIsAnIoError) {
  TempDir dir;
  const auto file = [&](const std::string& header, const std::string& data) {
    std::string out;
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    strata::test::write_text(dir / "h.safetensors", out + header + data);
    return dir / "h.safetensors";
  };
  const auto error = [&](const std::string& path) {
    try {
      load_safetensors(path);
    } catch (const IoError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string eight(8, 'x');
  EXPECT_EQ(error(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight)), "no error");
  EXPECT_NE(error(file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight))
                .find("do not hold 3 x 4 bytes"), std::string::npos);
  EXPECT_NE(error(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", eight)), "no error");
  EXPECT_NE(error(file(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", eight))
                .find("is not one Strata reads"), std::string::npos);
  EXPECT_NE(error(file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", eight))
                .find("overlap or leave a gap"), std::string::npos);
  EXPECT_NE(error(file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", eight))
                .find("4 bytes after the last tensor"), std::string::npos);
  EXPECT_NE(error(file("not json", "")).find("not a JSON object"), std::string::npos);
  EXPECT_NE(error(file(R"({"a":{"dtype":"U8","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})", eight)),
            "no error");
  strata::test::write_text(dir / "short.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8));
  EXPECT_NE(error(dir / "short.safetensors").find("the header claims"), std::string::npos);
}

// The check values of CRC-32C (RFC 3720's iSCSI polynomial) that
// TensorBoard's records carry.
TEST(TensorBoard, RecordChecksumsAreCrc32c) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  const uint32_t c = crc32c("123456789", 9);
  EXPECT_EQ(masked_crc32c("123456789", 9), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

}  // namespace
}  // namespace strata::train
