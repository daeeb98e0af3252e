#include "trainer/channels.h"

#include <algorithm>
#include <map>
#include <optional>

#include "core/error.h"
#include "trainer/torchscript.h"

namespace strata::train {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

namespace {

bool is(const Node* n, const char* qualified) {
  return n->kind() == c10::Symbol::fromQualString(qualified);
}

// The constant tensor `v` holds; an undefined tensor for anything else
// (None included).
at::Tensor tensor_of(Value* v) {
  const auto iv = jit::toIValue(v);
  return iv && iv->isTensor() ? iv->toTensor() : at::Tensor();
}

bool is_none(Value* v) {
  const auto iv = jit::toIValue(v);
  return iv && iv->isNone();
}

// Where the channels are in a value: dim 1 of NCHW (after a conv), the last
// dim (after a linear), or blocks of H*W columns (NCHW flattened).
enum class Layout { kChannels, kLast, kFlat };

// A conv2d or linear that reads the channels, and for a linear behind a
// flatten the NCHW value flattened (whose H*W is the block of columns per
// channel).
struct Reader {
  Node* node;
  Value* flattened = nullptr;
};

struct Group {
  Node* producer;
  Node* bn = nullptr;
  std::vector<Reader> readers;
};

// Ops that keep channels apart and map 0 to 0 (in `layout`), with what
// layout their output has; nullopt for any other op.
std::optional<Layout> passes(const Node* n, Layout layout) {
  if (is(n, "aten::relu") || is(n, "aten::relu_") || is(n, "aten::gelu") ||
      is(n, "aten::contiguous") ||
      (is(n, "aten::dropout") && jit::toIValue(n->input(2)) == c10::IValue(false))) {
    return layout;
  }
  if (layout != Layout::kChannels) return std::nullopt;
  if (is(n, "aten::max_pool2d") || is(n, "aten::avg_pool2d") ||
      is(n, "aten::adaptive_avg_pool2d")) {
    return layout;
  }
  if (is(n, "aten::mean") && n->inputs().size() >= 3) {
    const auto dims = constant_of(n->input(1));
    const auto keep = jit::toIValue(n->input(2));
    if (!dims || !dims->isIntList() || !keep || !keep->isBool()) return std::nullopt;
    std::vector<int64_t> d = dims->toIntVector();
    for (int64_t& x : d) x = x < 0 ? x + 4 : x;
    std::sort(d.begin(), d.end());
    if (d != std::vector<int64_t>{2, 3}) return std::nullopt;
    return keep->toBool() ? Layout::kChannels : Layout::kLast;
  }
  return std::nullopt;
}

// The channels of `producer` (a conv2d or linear over named constant
// weights) followed to their readers; nullopt when one reader cannot lose
// a channel (Note [Channel groups]).
std::optional<Group> follow(const FrozenGraph& g, Node* producer) {
  const bool conv = is(producer, "aten::conv2d");
  if (!conv && !is(producer, "aten::linear")) return std::nullopt;
  if (!tensor_of(producer->input(1)).defined() || g.name_of(producer->input(1)).empty()) {
    return std::nullopt;
  }
  if (!is_none(producer->input(2)) && !tensor_of(producer->input(2)).defined()) return std::nullopt;
  if (conv && jit::toIValue(producer->input(6)) != c10::IValue(1)) return std::nullopt;  // groups
  Group group{producer, nullptr, {}};
  Value* start = producer->output();
  if (conv && start->uses().size() == 1 && is(start->uses()[0].user, "aten::batch_norm")) {
    Node* bn = start->uses()[0].user;
    bool constant = jit::toIValue(bn->input(5)) == c10::IValue(false);  // not training
    for (size_t i = 1; i <= 4; ++i) {
      constant = constant && tensor_of(bn->input(i)).defined() && !g.name_of(bn->input(i)).empty();
    }
    if (!constant) return std::nullopt;
    group.bn = bn;
    start = bn->output();
  }
  std::vector<std::pair<Value*, std::pair<Layout, Value*>>> todo{
      {start, {conv ? Layout::kChannels : Layout::kLast, nullptr}}};
  const auto outputs = g.graph->outputs();
  while (!todo.empty()) {
    auto [v, where] = todo.back();
    auto [layout, flattened] = where;
    todo.pop_back();
    if (std::find(outputs.begin(), outputs.end(), v) != outputs.end()) return std::nullopt;
    for (const jit::Use& u : v->uses()) {
      Node* n = u.user;
      if (u.offset != 0) return std::nullopt;
      if (const auto next = passes(n, layout)) {
        todo.push_back({n->output(), {*next, flattened}});
      } else if (is(n, "aten::flatten") && layout == Layout::kChannels &&
                 jit::toIValue(n->input(1)) == c10::IValue(1) &&
                 jit::toIValue(n->input(2)) == c10::IValue(-1)) {
        todo.push_back({n->output(), {Layout::kFlat, v}});
      } else if (is(n, "aten::conv2d") && layout == Layout::kChannels &&
                 tensor_of(n->input(1)).defined() &&
                 jit::toIValue(n->input(6)) == c10::IValue(1)) {
        group.readers.push_back({n, nullptr});
      } else if (is(n, "aten::linear") && layout != Layout::kChannels &&
                 tensor_of(n->input(1)).defined()) {
        group.readers.push_back({n, flattened});
      } else {
        return std::nullopt;
      }
    }
  }
  if (group.readers.empty()) return std::nullopt;
  return group;
}

std::vector<Group> find_groups(const FrozenGraph& g) {
  std::vector<Group> out;
  for (Node* n : g.graph->nodes()) {
    if (auto group = follow(g, n)) out.push_back(std::move(*group));
  }
  return out;
}

// The columns per channel of each reader: 1, or the H*W of the value a
// flatten turned into its input (observed on `example`).
std::map<const Node*, int64_t> blocks(const FrozenGraph& g, const std::vector<Group>& groups,
                                      const at::Tensor& example) {
  std::map<const Node*, int64_t> out;
  std::vector<Value*> flattened;
  std::vector<const Node*> of;
  for (const Group& group : groups) {
    for (const Reader& r : group.readers) {
      out[r.node] = 1;
      if (r.flattened) {
        flattened.push_back(r.flattened);
        of.push_back(r.node);
      }
    }
  }
  if (flattened.empty()) return out;
  g.observe(flattened, {example}, [&](const std::vector<at::Tensor>& seen) {
    for (size_t i = 0; i < seen.size(); ++i) {
      int64_t block = 1;
      for (int64_t d = 2; d < seen[i].dim(); ++d) block *= seen[i].size(d);
      out[of[i]] = block;
    }
  });
  return out;
}

// Input `i` of `n` replaced by the constant `t`, named as the one it replaces.
void replace_constant(FrozenGraph& g, Node* n, size_t i, const at::Tensor& t) {
  jit::WithInsertPoint guard(n);
  Value* c = g.graph->insertConstant(t);
  g.names[c] = g.name_of(n->input(i));
  n->replaceInput(i, c);
}

}  // namespace

std::vector<ChannelGroup> channel_groups(const FrozenGraph& g) {
  const std::vector<Group> groups = find_groups(g);
  std::vector<ChannelGroup> out;
  for (const Group& group : groups) {
    ChannelGroup c;
    c.layer = g.name_of(group.producer->input(1));
    c.channels = tensor_of(group.producer->input(1)).size(0);
    c.zeroed.push_back(c.layer);
    if (!is_none(group.producer->input(2))) c.zeroed.push_back(g.name_of(group.producer->input(2)));
    if (group.bn) {
      c.zeroed.push_back(g.name_of(group.bn->input(1)));
      c.zeroed.push_back(g.name_of(group.bn->input(2)));
    }
    for (const Reader& r : group.readers) c.consumers.push_back(g.name_of(r.node->input(1)));
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<ChannelGroup> channel_groups(Model& model, const at::Tensor& example) {
  torch::NoGradGuard no_grad;
  const FrozenGraph g = train::freeze(trace_torchscript(model, example));
  return channel_groups(g);
}

std::vector<ShrunkLayer> shrink_channels(FrozenGraph& g, const at::Tensor& example) {
  torch::NoGradGuard no_grad;
  const std::vector<Group> groups = find_groups(g);
  const std::map<const Node*, int64_t> block = blocks(g, groups, example);
  std::vector<ShrunkLayer> out;
  for (const Group& group : groups) {
    Node* p = group.producer;
    const at::Tensor w = tensor_of(p->input(1));
    const at::Tensor b = tensor_of(p->input(2));
    at::Tensor zero;
    if (group.bn) {
      zero = tensor_of(group.bn->input(1)).eq(0) & tensor_of(group.bn->input(2)).eq(0);
    } else {
      zero = w.flatten(1).ne(0).any(1).logical_not();
      if (b.defined()) zero = zero & b.eq(0);
    }
    at::Tensor keep = zero.logical_not().nonzero().flatten();
    const int64_t channels = w.size(0);
    if (keep.numel() == 0) keep = at::zeros({1}, at::kLong);
    if (keep.numel() == channels) continue;
    replace_constant(g, p, 1, w.index_select(0, keep));
    if (b.defined()) replace_constant(g, p, 2, b.index_select(0, keep));
    if (group.bn) {
      for (size_t i = 1; i <= 4; ++i) {
        replace_constant(g, group.bn, i, tensor_of(group.bn->input(i)).index_select(0, keep));
      }
    }
    for (const Reader& r : group.readers) {
      const int64_t k = block.at(r.node);
      const at::Tensor cols =
          k == 1 ? keep : (keep.unsqueeze(1) * k + at::arange(k, at::kLong)).flatten();
      replace_constant(g, r.node, 1, tensor_of(r.node->input(1)).index_select(1, cols));
    }
    out.push_back({g.name_of(p->input(1)), channels, keep.numel()});
  }
  g.drop_dead();
  return out;
}

}  // namespace strata::train
