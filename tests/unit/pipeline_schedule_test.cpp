// Pipeline schedules as pure action lists: exact lists for small cases,
// then for p in {1, 2, 4} and m in {1, 4, 8}: every microbatch forward and
// backward once per stage (backward after forward), sends received in
// order with no deadlock, the (p - 1) / m bubble, and the activations held.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "distributed/pipeline_schedule.h"

namespace strata::dist {
namespace {

std::vector<std::vector<PipeAction>> all_stages(const std::string& name, int p, int m) {
  std::vector<std::vector<PipeAction>> out;
  for (int s = 0; s < p; ++s) out.push_back(pipeline_schedule(name, p, s, m));
  return out;
}

TEST(PipelineSchedule, GpipeRunsAllForwardsThenAllBackwards) {
  EXPECT_EQ(to_string(pipeline_schedule("gpipe", 2, 0, 2)),
            "F0 sendA0 F1 sendA1 recvG0 B0 recvG1 B1");
  EXPECT_EQ(to_string(pipeline_schedule("gpipe", 2, 1, 2)),
            "recvA0 F0 recvA1 F1 B0 sendG0 B1 sendG1");
}

TEST(PipelineSchedule, OneFOneBWarmsUpThenAlternates) {
  // Stage 0 of 3: two warm-up forwards, then F/B pairs, then two backwards.
  EXPECT_EQ(to_string(pipeline_schedule("1f1b", 3, 0, 4)),
            "F0 sendA0 F1 sendA1 F2 sendA2 recvG0 B0 F3 sendA3 recvG1 B1 recvG2 B2 recvG3 B3");
  // The last stage never warms up.
  EXPECT_EQ(to_string(pipeline_schedule("1f1b", 3, 2, 2)),
            "recvA0 F0 B0 sendG0 recvA1 F1 B1 sendG1");
}

TEST(PipelineSchedule, EveryLayoutRunsEachMicrobatchOnceWithTheTheoreticalBubble) {
  for (const std::string name : pipeline_schedule_names()) {
    for (int p : {1, 2, 4}) {
      for (int m : {1, 4, 8}) {
        const auto stages = all_stages(name, p, m);
        for (int s = 0; s < p; ++s) {
          std::map<int, int> forwards, backwards;
          for (const auto& a : stages[s]) {
            if (a.op == PipeOp::kForward) ++forwards[a.microbatch];
            if (a.op == PipeOp::kBackward) {
              ++backwards[a.microbatch];
              EXPECT_EQ(forwards[a.microbatch], 1) << name << " backward before forward";
            }
          }
          for (int mb = 0; mb < m; ++mb) {
            EXPECT_EQ(forwards[mb], 1) << name << " p" << p << " m" << m << " s" << s;
            EXPECT_EQ(backwards[mb], 1) << name << " p" << p << " m" << m << " s" << s;
          }
          // gpipe holds every microbatch; 1f1b at most p - s of them.
          EXPECT_EQ(peak_activations(stages[s]), name == "gpipe" ? m : std::min(p - s, m))
              << name << " p" << p << " m" << m << " s" << s;
        }
        // F = 1, B = 2: the makespan is (m + p - 1)(F + B), so the idle
        // share over the useful m(F + B) is (p - 1) / m.
        const double makespan = simulate_pipeline(stages, 1.0, 2.0);
        EXPECT_DOUBLE_EQ(makespan, (m + p - 1) * 3.0) << name << " p" << p << " m" << m;
      }
    }
  }
}

TEST(PipelineSchedule, TheSimulatorCatchesDeadlocksAndDisorder) {
  // Stage 1 receives microbatch 1 before 0: out of the sender's order.
  std::vector<std::vector<PipeAction>> swapped = all_stages("gpipe", 2, 2);
  std::swap(swapped[1][0], swapped[1][2]);
  EXPECT_THROW(simulate_pipeline(swapped), InternalError);
  // Stage 0 waits for a gradient before sending the activation it needs.
  std::vector<std::vector<PipeAction>> stuck{
      {{PipeOp::kForward, 0}, {PipeOp::kRecvGrad, 0}, {PipeOp::kSendActivation, 0},
       {PipeOp::kBackward, 0}},
      {{PipeOp::kRecvActivation, 0}, {PipeOp::kForward, 0}, {PipeOp::kBackward, 0},
       {PipeOp::kSendGrad, 0}}};
  try {
    simulate_pipeline(stuck);
    FAIL();
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("deadlock"), std::string::npos) << e.what();
  }
}

TEST(PipelineSchedule, UnknownNamesAndBadLayoutsAreConfigErrors) {
  try {
    pipeline_schedule("1f1", 2, 0, 4);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean '1f1b'?"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pipeline_schedule("gpipe", 2, 2, 4), ConfigError);
  EXPECT_THROW(pipeline_schedule("gpipe", 2, 0, 0), ConfigError);
}

TEST(PartitionLayers, MinimisesTheHeaviestStage) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(partition_layers({1, 1, 1, 1}, 2), (V{2, 2}));
  EXPECT_EQ(partition_layers({1, 1, 1, 1}, 4), (V{1, 1, 1, 1}));
  // A heavy embedding and head (gpt): the blocks gather in the middle.
  EXPECT_EQ(partition_layers({10, 3, 3, 3, 3, 10}, 3), (V{1, 4, 1}));
  EXPECT_EQ(partition_layers({10, 3, 3, 3, 3, 10}, 2), (V{3, 3}));
  EXPECT_EQ(partition_layers({5}, 1), (V{1}));
  // Brute force over every split of 7 layers into 3 stages.
  const V w{4, 1, 7, 2, 2, 6, 3};
  int64_t best = 1 << 30;
  for (int a = 1; a < 6; ++a) {
    for (int b = a + 1; b < 7; ++b) {
      int64_t s0 = 0, s1 = 0, s2 = 0;
      for (int i = 0; i < 7; ++i) (i < a ? s0 : i < b ? s1 : s2) += w[i];
      best = std::min(best, std::max({s0, s1, s2}));
    }
  }
  const V got = partition_layers(w, 3);
  int64_t heaviest = 0;
  for (int s = 0, i = 0; s < 3; ++s) {
    int64_t sum = 0;
    for (int k = 0; k < got[s]; ++k) sum += w[i++];
    heaviest = std::max(heaviest, sum);
  }
  EXPECT_EQ(heaviest, best);
}

TEST(PartitionLayers, MoreStagesThanLayersSaysSo) {
  try {
    partition_layers({1, 2}, 3);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot split 2 layer(s) into 3 pipeline stages"),
              std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace strata::dist
