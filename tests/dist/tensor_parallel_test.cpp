// Tensor-parallel layers against their dense counterparts, forward and
// backward, at tp = 2 and 4 (thread ranks over gloo): the input gradient is
// the dense one, each weight shard's gradient the matching slice of the
// dense weight's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>

#include "core/error.h"
#include "distributed/tensor_parallel.h"
#include "thread_ranks.h"

namespace strata::dist {
namespace {

constexpr double kTol = 1e-5;

// Slice r of t along `dim`.
at::Tensor part(const at::Tensor& t, int64_t dim, int r, int n) { return t.chunk(n, dim)[r]; }

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_TRUE(at::allclose(a, b, kTol, kTol)) << what << ": max diff "
                                             << (a - b).abs().max().item<double>();
}

struct Dense {
  at::Tensor w, b, x, upstream;
};

// A dense layer's output and gradients for loss = sum(y * upstream).
struct DenseResult {
  at::Tensor y, dx, dw, db;
};
DenseResult dense_linear(const Dense& d) {
  at::Tensor x = d.x.clone().requires_grad_(true);
  at::Tensor w = d.w.clone().requires_grad_(true), b = d.b.clone().requires_grad_(true);
  at::Tensor y = at::linear(x, w, b);
  (y * d.upstream).sum().backward();
  return {y.detach(), x.grad(), w.grad(), b.grad()};
}

Dense make_dense(int64_t in, int64_t out) {
  torch::manual_seed(11);
  Dense d;
  std::tie(d.w, d.b) = dense_linear_init(in, out, true);
  d.x = at::randn({3, 5, in});  // [B, T, I]
  d.upstream = at::randn({3, 5, out});
  return d;
}

TEST(TensorParallel, DenseInitMatchesTorchLinear) {
  torch::manual_seed(3);
  auto [w, b] = dense_linear_init(6, 4, true);
  torch::manual_seed(3);
  torch::nn::Linear ref(6, 4);
  EXPECT_TRUE(at::equal(w, ref->weight));
  EXPECT_TRUE(at::equal(b, ref->bias));
}

TEST(TensorParallel, ColumnAndRowLinearEqualTheDenseLayer) {
  for (int tp : {2, 4}) {
    const Dense d = make_dense(8, 12);
    const DenseResult ref = dense_linear(d);
    test::run_ranks_shared(tp, [&](std::shared_ptr<Communicator> g) {
      const int r = g->rank();
      {
        ColumnParallelLinear col(d.w, d.b, g, /*gather_output=*/true);
        at::Tensor x = d.x.clone().requires_grad_(true);
        at::Tensor y = col.forward(x);
        expect_close(y, ref.y, "column forward");
        (y * d.upstream).sum().backward();
        expect_close(x.grad(), ref.dx, "column dx");
        expect_close(col.weight.grad(), part(ref.dw, 0, r, tp), "column dW shard");
        expect_close(col.bias.grad(), part(ref.db, 0, r, tp), "column db shard");
      }
      {
        RowParallelLinear row(d.w, d.b, g, /*input_is_parallel=*/false);
        at::Tensor x = d.x.clone().requires_grad_(true);
        at::Tensor y = row.forward(x);
        expect_close(y, ref.y, "row forward");
        (y * d.upstream).sum().backward();
        expect_close(x.grad(), ref.dx, "row dx");
        expect_close(row.weight.grad(), part(ref.dw, 1, r, tp), "row dW shard");
        expect_close(row.bias.grad(), ref.db, "row db");
      }
    });
  }
}

TEST(TensorParallel, ColumnThenRowIsTheDenseMlpWithOneAllReduceEachWay) {
  for (int tp : {2, 4}) {
    torch::manual_seed(5);
    auto [w1, b1] = dense_linear_init(8, 16, true);
    auto [w2, b2] = dense_linear_init(16, 8, true);
    const at::Tensor x0 = at::randn({4, 8}), up = at::randn({4, 8});
    at::Tensor xr = x0.clone().requires_grad_(true);
    at::Tensor W1 = w1.clone().requires_grad_(true), W2 = w2.clone().requires_grad_(true);
    at::Tensor yr = at::linear(at::gelu(at::linear(xr, W1, b1)), W2, b2);
    (yr * up).sum().backward();
    test::run_ranks_shared(tp, [&](std::shared_ptr<Communicator> g) {
      ColumnParallelLinear fc(w1, b1, g, /*gather_output=*/false);
      RowParallelLinear proj(w2, b2, g, /*input_is_parallel=*/true);
      at::Tensor x = x0.clone().requires_grad_(true);
      at::Tensor y = proj.forward(at::gelu(fc.forward(x)));
      expect_close(y, yr.detach(), "mlp forward");
      (y * up).sum().backward();
      expect_close(x.grad(), xr.grad(), "mlp dx");
      expect_close(fc.weight.grad(), part(W1.grad(), 0, g->rank(), tp), "fc dW");
      expect_close(proj.weight.grad(), part(W2.grad(), 1, g->rank(), tp), "proj dW");
    });
  }
}

TEST(TensorParallel, VocabParallelEmbeddingAndCrossEntropyEqualTheDenseOnes) {
  for (int tp : {2, 4}) {
    torch::manual_seed(7);
    const at::Tensor table = at::randn({16, 6});
    const at::Tensor ids = at::randint(0, 16, {3, 5}, at::kLong);
    const at::Tensor logits0 = at::randn({3, 5, 16});
    const at::Tensor up = at::randn({3, 5, 6});
    at::Tensor tr = table.clone().requires_grad_(true);
    (at::embedding(tr, ids) * up).sum().backward();
    at::Tensor lr = logits0.clone().requires_grad_(true);
    at::Tensor ce = at::cross_entropy_loss(lr.reshape({-1, 16}), ids.reshape({-1}));
    ce.backward();
    test::run_ranks_shared(tp, [&](std::shared_ptr<Communicator> g) {
      const int r = g->rank();
      VocabParallelEmbedding emb(table, g);
      EXPECT_EQ(emb.vocab_start(), 16 / tp * r);
      at::Tensor y = emb.forward(ids);
      expect_close(y, at::embedding(table, ids), "embedding forward");
      (y * up).sum().backward();
      expect_close(emb.weight.grad(), part(tr.grad(), 0, r, tp), "embedding dW shard");

      at::Tensor mine = part(logits0, 2, r, tp).clone().requires_grad_(true);
      at::Tensor loss = vocab_parallel_cross_entropy(mine, ids, emb.vocab_start(), g);
      EXPECT_NEAR(loss.item<double>(), ce.item<double>(), kTol);
      loss.backward();
      expect_close(mine.grad(), part(lr.grad(), 2, r, tp), "cross-entropy dlogits shard");
    });
  }
}

TEST(TensorParallel, ASizeThatDoesNotDivideSaysSo) {
  torch::manual_seed(1);
  auto [w, b] = dense_linear_init(6, 10, true);
  test::run_ranks_shared(4, [&](std::shared_ptr<Communicator> g) {
    try {
      ColumnParallelLinear col(w, b, g, false);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("output features (10) is not divisible by "
                                           "tensor_parallel = 4"),
                std::string::npos) << e.what();
    }
  });
}

// What a sharded checkpoint relies on: the split each layer reports, cut
// from the full tensor by shard_of, is the layer's own shard, and
// join_shards puts the full tensor back.
TEST(TensorParallel, ShardSpecsCutAndJoinWhatTheLayersHold) {
  torch::manual_seed(2);
  const at::Tensor qkv = at::randn({12, 4}), qkv_bias = at::randn({12});
  const at::Tensor proj = at::randn({4, 6}), proj_bias = at::randn({4});
  const at::Tensor table = at::randn({8, 4});
  const int t = 2;
  {
    std::vector<std::map<std::string, at::Tensor>> held(t);
    std::map<std::string, TpShard> specs;
    std::mutex mu;
    test::run_ranks_shared(t, [&](std::shared_ptr<Communicator> g) {
      torch::nn::Module root;
      root.register_module("c_attn", std::make_shared<ColumnParallelLinear>(qkv, qkv_bias, g,
                                                                            false, 3));
      root.register_module("c_proj", std::make_shared<RowParallelLinear>(proj, proj_bias, g, true));
      root.register_module("wte", std::make_shared<VocabParallelEmbedding>(table, g));
      std::lock_guard<std::mutex> lock(mu);
      specs = tensor_parallel_shards(root);
      for (const auto& p : root.named_parameters()) held[g->rank()][p.key()] = p.value().detach();
    });
    EXPECT_EQ(specs.size(), 4u);  // c_proj.bias is replicated
    EXPECT_EQ(specs.count("c_proj.bias"), 0u);
    EXPECT_EQ(specs.at("c_attn.weight").groups, 3);
    EXPECT_EQ(specs.at("c_proj.weight").dim, 1);
    const std::map<std::string, at::Tensor> full{{"c_attn.weight", qkv},
                                                 {"c_attn.bias", qkv_bias},
                                                 {"c_proj.weight", proj},
                                                 {"wte.weight", table}};
    for (const auto& [name, spec] : specs) {
      std::vector<at::Tensor> shards;
      for (int r = 0; r < t; ++r) {
        EXPECT_TRUE(at::equal(shard_of(full.at(name), spec, r, t), held[r].at(name))) << name;
        shards.push_back(held[r].at(name));
      }
      EXPECT_TRUE(at::equal(join_shards(shards, spec), full.at(name))) << name;
    }
  }
}

}  // namespace
}  // namespace strata::dist
