// Recipes: typed parsing, strictness (messages name file:line, key path and
// the fix), overrides, emission and the documented schema.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/fs.h"
#include "trainer/recipe.h"

namespace strata::train {
namespace {

std::string error_of(const std::string& yaml,
                     const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe(yaml, "r.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const UsageError& e) {
    return std::string("usage: ") + e.what();
  }
  return "no error";
}

TEST(Recipe, EmptyDocumentGivesDefaults) {
  Recipe r = parse_recipe("", "empty.yaml");
  EXPECT_EQ(r.model.name, "cnn");
  EXPECT_EQ(r.data.batch_size, 128);
  EXPECT_DOUBLE_EQ(r.optimizer.lr, 0.05);
  EXPECT_TRUE(r.origin.empty());
  EXPECT_EQ(r.run_dir(), "runs/fashion_mnist");
}

TEST(Recipe, ParsesEveryType) {
  Recipe r = parse_recipe(
      "run: {name: x, seed: 7}\n"
      "model:\n  name: mlp\n  hidden: [64, 32]\n  dropout: 0.25\n"
      "data:\n  shuffle: false\n  augment:\n    crop_padding: 2\n"
      "optimizer: {lr: 1, betas: [0.8, 0.9]}\n",
      "r.yaml");
  EXPECT_EQ(r.run.name, "x");
  EXPECT_EQ(r.run.seed, 7);
  EXPECT_EQ(r.model.hidden, (std::vector<int64_t>{64, 32}));
  EXPECT_DOUBLE_EQ(r.model.dropout, 0.25);
  EXPECT_FALSE(r.data.shuffle);
  EXPECT_EQ(r.data.augment.crop_padding, 2);
  EXPECT_DOUBLE_EQ(r.optimizer.lr, 1.0);  // an int where a float is expected
  EXPECT_EQ(r.optimizer.betas, (std::vector<double>{0.8, 0.9}));
  EXPECT_EQ(r.where("model.hidden"), "r.yaml:4: ");
  EXPECT_EQ(r.where("data.augment.crop_padding"), "r.yaml:9: ");
}

TEST(Recipe, UnknownKeyNamesLineAndSuggests) {
  std::string e = error_of("optimizer:\n  lr: 0.1\n  momentun: 0.9\n");
  EXPECT_NE(e.find("r.yaml:3: unknown key 'optimizer.momentun'"),
            std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'optimizer.momentum'?"), std::string::npos)
      << e;
}

TEST(Recipe, UnknownSectionSuggests) {
  std::string e = error_of("optimiser:\n  lr: 0.1\n");
  EXPECT_NE(e.find("r.yaml:1: unknown key 'optimiser'; did you mean "
                   "'optimizer'?"),
            std::string::npos) << e;
}

TEST(Recipe, WrongTypeNamesKeyAndValue) {
  std::string e = error_of("train:\n  epochs: ten\n");
  EXPECT_NE(e.find("r.yaml:2: train.epochs: expected an integer, got 'ten'"),
            std::string::npos) << e;
  e = error_of("model:\n  hidden: 5\n");
  EXPECT_NE(e.find("model.hidden: expected a list of int"), std::string::npos)
      << e;
  e = error_of("data:\n  shuffle: maybe\n");
  EXPECT_NE(e.find("data.shuffle: expected true or false"), std::string::npos)
      << e;
  e = error_of("run: [1, 2]\n");
  EXPECT_NE(e.find("'run' must be a mapping"), std::string::npos) << e;
}

TEST(Recipe, OutOfRangeSaysTheRange) {
  std::string e = error_of("optimizer:\n  lr: -0.5\n");
  EXPECT_NE(e.find("r.yaml:2: optimizer.lr = -0.5 is out of range; it must "
                   "be > 0"),
            std::string::npos) << e;
  e = error_of("model: {hidden: [64, 0]}\n");
  EXPECT_NE(e.find("model.hidden[1] = 0 is out of range; it must be >= 1"),
            std::string::npos) << e;
  e = error_of("train: {activation_checkpointing: some}\n");
  EXPECT_NE(e.find("train.activation_checkpointing: 'some' is not allowed"), std::string::npos)
      << e;
}

TEST(Recipe, UnknownKeyWithoutSuggestionEndsItsSentence) {
  std::string e = error_of("data:\n  zzzz: 1\n");
  EXPECT_NE(e.find("r.yaml:2: unknown key 'data.zzzz'. Valid keys under 'data': "),
            std::string::npos) << e;
}

// YAML leaves repeated keys to the reader; a recipe refuses them instead of
// silently using one.
TEST(Recipe, DuplicateKeysAreRefusedWithBothLines) {
  std::string e = error_of("run:\n  name: a\n  seed: 3\n  name: b\n");
  EXPECT_NE(e.find("r.yaml:4: duplicate key 'run.name' (first at r.yaml:2); keep one of them"),
            std::string::npos) << e;
  e = error_of("run: {name: x, name: y}\n");
  EXPECT_NE(e.find("r.yaml:1: duplicate key 'run.name'"), std::string::npos) << e;
  e = error_of("model: {name: mlp}\noptimizer: {lr: 1}\nmodel: {hidden: [3]}\n");
  EXPECT_NE(e.find("r.yaml:3: duplicate key 'model' (first at r.yaml:1)"), std::string::npos) << e;
  // The same key in two sections is not a duplicate.
  EXPECT_EQ(error_of("run: {name: a}\ndistill: {teacher_model: {name: mlp}}\n"), "no error");
}

TEST(Recipe, InvalidYamlNamesLine) {
  std::string e = error_of("model:\n  name: [cnn\n");
  EXPECT_NE(e.find("r.yaml:3: invalid YAML"), std::string::npos) << e;
}

TEST(Recipe, OverridesAreTypedAndStrict) {
  Recipe r = parse_recipe("optimizer: {lr: 0.1}\n", "r.yaml",
                          {"optimizer.lr=0.5", "model.hidden=[8, 4]",
                           "run.name=abc"});
  EXPECT_DOUBLE_EQ(r.optimizer.lr, 0.5);
  EXPECT_EQ(r.model.hidden, (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(r.run.name, "abc");
  EXPECT_EQ(r.where("optimizer.lr"),
            "command-line override 'optimizer.lr=0.5': ");

  std::string e = error_of("", {"optimizer.lrr=0.1"});
  EXPECT_NE(e.find("command-line override 'optimizer.lrr=0.1': unknown key "
                   "'optimizer.lrr'; did you mean 'optimizer.lr'?"),
            std::string::npos) << e;
  e = error_of("", {"train.epochs=1.5"});
  EXPECT_NE(e.find("train.epochs: expected an integer, got '1.5'"),
            std::string::npos) << e;
  e = error_of("", {"lr"});
  EXPECT_EQ(e.rfind("usage: ", 0), 0u) << e;
}

TEST(Recipe, EmittedYamlParsesBackToTheSameRecipe) {
  Recipe r = parse_recipe("run: {name: 'a b', dir: 'x: y'}\n", "r.yaml",
                          {"optimizer.lr=0.1", "optimizer.betas=[0.5, 0.75]",
                           "run.seed=3"});
  const std::string once = to_yaml(r);
  const std::string twice = to_yaml(parse_recipe(once, "emitted.yaml"));
  EXPECT_EQ(once, twice);
  Recipe back = parse_recipe(once, "emitted.yaml");
  EXPECT_EQ(back.run.dir, "x: y");
  EXPECT_DOUBLE_EQ(back.optimizer.lr, 0.1);
}

TEST(Recipe, EveryKeyIsDocumentedInRecipesReadme) {
  const std::string readme =
      read_file(std::string(STRATA_SOURCE_DIR) + "/recipes/README.md");
  const std::string table = schema_markdown();
  EXPECT_NE(readme.find(table), std::string::npos)
      << "recipes/README.md is out of date; paste the output of "
         "`build/bin/strata-train --print-schema` into it. Expected table:\n"
      << table;
}

TEST(Recipe, ShippedRecipesLoad) {
  for (const auto& name : list_files(std::string(STRATA_SOURCE_DIR) + "/recipes")) {
    if (name.size() < 5 || name.substr(name.size() - 5) != ".yaml") continue;
    SCOPED_TRACE(name);
    EXPECT_NO_THROW(load_recipe(std::string(STRATA_SOURCE_DIR) + "/recipes/" + name));
  }
}

}  // namespace
}  // namespace strata::train
