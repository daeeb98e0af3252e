#include "trainer/qat.h"

#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/runtime/interpreter.h>
#include <torch/library.h>
#include <torch/serialize.h>

#include <algorithm>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/fs.h"
#include "trainer/checkpoint.h"
#include "trainer/quantize.h"
#include "trainer/torchscript.h"

namespace strata::train {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

at::Tensor fake_quantize_weight(const at::Tensor& w, bool per_channel) {
  // The scales of quantize_weight: max |w| / 127.5 over the channel or tensor.
  const float eps = std::numeric_limits<float>::epsilon();
  const at::Tensor a = w.detach().abs();
  if (!per_channel) {
    const at::Tensor scale = (a.max() / 127.5f).clamp_min(eps).reshape({1});
    return at::fake_quantize_per_tensor_affine(
        w, scale, at::zeros({1}, w.options().dtype(at::kInt)), -128, 127);
  }
  const at::Tensor scales = (a.flatten(1).amax(1) / 127.5f).clamp_min(eps);
  return at::fake_quantize_per_channel_affine(
      w, scales, at::zeros({w.size(0)}, w.options().dtype(at::kInt)), 0, -128, 127);
}

at::Tensor fake_quantize_activation(const at::Tensor& x, const at::Tensor& lo_hi,
                                    int64_t quant_max) {
  // affine_qparams on the device, in float: no host synchronisation.
  const float eps = std::numeric_limits<float>::epsilon();
  const at::Tensor r = lo_hi.detach().to(at::kFloat);
  const at::Tensor lo = r.narrow(0, 0, 1).clamp_max(0), hi = r.narrow(0, 1, 1).clamp_min(0);
  const at::Tensor scale = ((hi - lo) / static_cast<float>(quant_max)).clamp_min(eps);
  const at::Tensor zp = (-(lo / scale).round()).clamp(0, static_cast<double>(quant_max)).to(at::kInt);
  const at::Tensor y = at::fake_quantize_per_tensor_affine(x.to(at::kFloat), scale, zp, 0, quant_max);
  return y.to(x.scalar_type());
}

namespace {

// The training graph's ops (Note [Quantization-aware training]), composite:
// autograd runs through the ATen ops they call.

at::Tensor qat_weight(const at::Tensor& w, bool per_channel, bool enabled) {
  return enabled ? fake_quantize_weight(w, per_channel) : w;
}

// gamma / sqrt(running_var + eps), shaped to scale dimension `dim` of a
// tensor of `dims` dimensions.
at::Tensor bn_factor(const c10::optional<at::Tensor>& gamma, const at::Tensor& var, double eps,
                     int64_t dims, int64_t dim) {
  at::Tensor f = at::rsqrt(var.detach() + eps);
  if (gamma && gamma->defined()) f = *gamma * f;
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape[static_cast<size_t>(dim)] = -1;
  return f.reshape(shape);
}

at::Tensor qat_bn_weight(const at::Tensor& w, const c10::optional<at::Tensor>& gamma,
                         const at::Tensor& var, double eps, bool per_channel, bool enabled) {
  if (!enabled) return w;
  return fake_quantize_weight(w * bn_factor(gamma, var, eps, w.dim(), 0), per_channel);
}

at::Tensor qat_bn_output(const at::Tensor& y, const c10::optional<at::Tensor>& gamma,
                         const at::Tensor& var, double eps, const c10::optional<at::Tensor>& bias,
                         bool enabled) {
  // A channel whose BatchNorm weight is 0 (pruned: train.prune.structure=
  // channels) has a folded weight of 0, so its y is 0: it stays 0 rather
  // than 0 / 0.
  at::Tensor out = y;
  if (enabled) {
    const at::Tensor f = bn_factor(gamma, var, eps, y.dim(), 1);
    out = y / at::where(f == 0, at::ones_like(f), f);
  }
  if (bias && bias->defined()) {
    std::vector<int64_t> shape(static_cast<size_t>(y.dim()), 1);
    shape[1] = -1;
    out = out + bias->reshape(shape);
  }
  return out;
}

// state [3] float: the observed range (lo, hi) and the batches observed.
at::Tensor qat_activation(const at::Tensor& x, const at::Tensor& state, bool observe, bool enabled,
                          double averaging, int64_t quant_max) {
  if (observe) {
    torch::NoGradGuard no_grad;
    const at::Tensor xf = x.detach().to(at::kFloat);
    const at::Tensor batch = at::stack({xf.min(), xf.max()});
    at::Tensor range = state.narrow(0, 0, 2);
    const at::Tensor moved = range + averaging * (batch - range);
    range.copy_(at::where(state.narrow(0, 2, 1) > 0, moved, batch));
    state.narrow(0, 2, 1).add_(1);
  }
  return enabled ? fake_quantize_activation(x, state.narrow(0, 0, 2), quant_max) : x;
}

TORCH_LIBRARY(strata, m) {
  m.def("qat_weight(Tensor w, bool per_channel, bool enabled) -> Tensor", &qat_weight);
  m.def("qat_bn_weight(Tensor w, Tensor? gamma, Tensor running_var, float eps, bool per_channel, "
        "bool enabled) -> Tensor",
        &qat_bn_weight);
  m.def("qat_bn_output(Tensor y, Tensor? gamma, Tensor running_var, float eps, Tensor? bias, "
        "bool enabled) -> Tensor",
        &qat_bn_output);
  m.def("qat_activation(Tensor x, Tensor(a!) state, bool observe, bool enabled, float averaging, "
        "int quant_max) -> Tensor",
        &qat_activation);
}

c10::Symbol sym(const char* qualified) { return c10::Symbol::fromQualString(qualified); }
bool is(const Node* n, const char* qualified) { return n->kind() == sym(qualified); }
bool is_relu(const Node* n) { return is(n, "aten::relu") || is(n, "aten::relu_"); }

// What the rewrite knows of the traced graph: which values depend only on
// the module (its parameters and buffers, constants), and the tensors and
// names of the module's attributes read directly.
struct ModuleReads {
  std::unordered_set<const Value*> fixed;  // input-independent
  std::unordered_map<const Value*, std::pair<at::Tensor, std::string>> tensors;

  ModuleReads(jit::Graph& g, const jit::Module& m) {
    fixed.insert(g.inputs()[0]);
    for (Node* n : g.nodes()) {
      bool all = true;
      for (Value* v : n->inputs()) all = all && fixed.count(v);
      if (all) {
        for (Value* o : n->outputs()) fixed.insert(o);
      }
    }
    for (const ModuleRead& r : module_reads(g, m)) {
      if (r.value.isTensor()) tensors[r.node->output()] = {r.value.toTensor(), r.name};
    }
  }
  // What the frozen graph of quantize() holds as a constant (Note [The
  // frozen graph]): a constant, a parameter or buffer read directly, or a
  // list of constants. Its passes key on exactly that, so this graph's
  // must too (a value computed from parameters alone is not one).
  bool constant(const Value* v) const {
    const Node* n = v->node();
    if (n->kind() == c10::prim::Constant || tensors.count(v)) return true;
    if (n->kind() != c10::prim::ListConstruct) return false;
    for (const Value* e : n->inputs()) {
      if (e->node()->kind() != c10::prim::Constant) return false;
    }
    return true;
  }
  const at::Tensor* tensor(const Value* v) const {
    const auto it = tensors.find(v);
    return it == tensors.end() ? nullptr : &it->second.first;
  }
  std::string name(const Value* v) const {
    const auto it = tensors.find(v);
    return it == tensors.end() ? std::string() : it->second.second;
  }
};

// Moves the input-independent nodes that define `v` (GetAttr chains,
// constants) before `before`, so that an op there can read it.
void hoist(Value* v, Node* before, const ModuleReads& m) {
  Node* def = v->node();
  if (def->kind() == c10::prim::Param || def->isBefore(before)) return;
  STRATA_INTERNAL_ASSERT(m.fixed.count(v), "hoisting an input-dependent value");
  for (Value* in : def->inputs()) hoist(in, before, m);
  def->moveBefore(before);
}

}  // namespace

QatGraph::QatGraph(Model& model, const QatSection& section, const at::Tensor& example,
                   const std::string& where)
    : model_(model), s_(section) {
  STRATA_CHECK_T(ConfigError,
                 s_.freeze_observer_step == 0 || s_.freeze_observer_step > s_.start_step, where,
                 "train.qat.freeze_observer_step=", s_.freeze_observer_step,
                 " must come after start_step=", s_.start_step,
                 " (the observers need at least one step to see the activations' ranges), or "
                 "be 0 (never frozen)");
  traced_ = trace_torchscript(model, example);
  graph_ = traced_.get_method("forward").graph()->copy();
  jit::Graph& g = *graph_;
  Value* training = g.addInput("training")->setType(c10::BoolType::get());
  Value* bn_batch = g.addInput("bn_batch_statistics")->setType(c10::BoolType::get());
  Value* observe = g.addInput("observe")->setType(c10::BoolType::get());
  Value* enabled = g.addInput("fake_quant")->setType(c10::BoolType::get());
  {
    // Linear layers in one form (matmul_to_linear), as quantize() sees them.
    const ModuleReads before(g, traced_);
    matmul_to_linear(g, [&](Value* w) {
      const at::Tensor* t = before.tensor(w);
      return t && t->dim() == 2;
    });
    jit::EliminateDeadCode(graph_);
  }
  const ModuleReads m(g, traced_);
  const at::Device device = example.device();

  // The int8 ops to come (quantize()'s targets, in graph order) and the
  // activations they quantize.
  struct Target {
    Node* node;
    Node* bn = nullptr;  // the BatchNorm it absorbs
    Value* out;          // after the BatchNorm and ReLU it absorbs
    std::string layer;
  };
  std::vector<Target> targets;
  // Values computed in int8 by then, each with the point whose scale it has.
  std::unordered_map<const Value*, const Value*> derived;
  // Pass-through ops that round to their input's grid again (averages).
  std::vector<std::pair<Node*, const Value*>> regrid;
  std::unordered_set<const Node*> absorbed;
  struct Point {
    Value* value;
    std::string key;  // the first name (Note [QAT ranges])
    bool output;      // an int8 op's output, or a float input of one
  };
  std::vector<Point> points;  // values to fake-quantize
  std::unordered_set<const Value*> pointed;
  auto point = [&](Value* v, const std::string& key, bool output) {
    if (pointed.insert(v).second) points.push_back({v, key, output});
  };
  const std::vector<Node*> nodes(g.nodes().begin(), g.nodes().end());
  for (Node* n : nodes) {
    const bool conv = (is(n, "aten::_convolution") || is(n, "aten::conv2d")) && m.tensor(n->input(1)) &&
                      m.tensor(n->input(1))->dim() == 4 &&
                      (!is(n, "aten::_convolution") ||
                       jit::toIValue(n->input(6)) == c10::IValue(false));
    bool weighted = conv || (is(n, "aten::linear") && m.tensor(n->input(1)));
    for (size_t i = 1; weighted && i < n->inputs().size(); ++i) weighted = m.constant(n->input(i));
    const bool add = is(n, "aten::add") && n->inputs().size() == 3 &&
                     n->input(1)->type()->isSubtypeOf(*c10::TensorType::get()) &&
                     !m.constant(n->input(0)) && !m.constant(n->input(1)) &&
                     jit::toIValue(n->input(2)) == c10::IValue(1);
    if (!weighted && !add) {
      if (!absorbed.count(n) && (int8_passes_through(n) || is(n, "aten::dropout")) &&
          derived.count(n->input(0))) {
        derived[n->output()] = derived.at(n->input(0));
        if (is(n, "aten::mean") || is(n, "aten::avg_pool2d") || is(n, "aten::adaptive_avg_pool2d")) {
          regrid.emplace_back(n, derived.at(n->input(0)));
        }
      }
      continue;
    }
    Target t{n, nullptr, n->output(), weighted ? m.name(n->input(1)) : "add"};
    if (weighted && t.out->uses().size() == 1 && is(t.out->uses()[0].user, "aten::batch_norm") &&
        t.out->uses()[0].offset == 0) {
      Node* bn = t.out->uses()[0].user;
      bool fixed = true;
      for (size_t i = 1; i < 5; ++i) fixed = fixed && m.constant(bn->input(i));
      if (fixed && m.tensor(bn->input(4))) {
        t.bn = bn;
        t.out = bn->output();
        absorbed.insert(bn);
      }
    }
    if (t.out->uses().size() == 1 && is_relu(t.out->uses()[0].user)) {
      absorbed.insert(t.out->uses()[0].user);
      t.out = t.out->uses()[0].user->output();
    }
    const size_t k = targets.size();
    if (!derived.count(n->input(0))) point(n->input(0), activation_point(k, t.layer, "in"), false);
    if (add && !derived.count(n->input(1))) {
      point(n->input(1), activation_point(k, t.layer, "in2"), false);
    }
    point(t.out, activation_point(k, t.layer, "out"), true);
    derived[t.out] = t.out;
    targets.push_back(t);
  }
  STRATA_CHECK_T(ConfigError, !targets.empty(), where,
                 "train.qat: the model has no conv2d, linear or residual add to quantize");

  // Weights: fake-quantized where the layer reads them; a layer before a
  // BatchNorm as it will be folded.
  for (const Target& t : targets) {
    if (!is(t.node, "aten::linear") && !is(t.node, "aten::_convolution") &&
        !is(t.node, "aten::conv2d")) {
      continue;
    }
    Node* n = t.node;
    jit::WithInsertPoint guard(n);
    const bool per_channel = s_.per_channel;
    if (!t.bn) {
      n->replaceInput(1, g.insert(sym("strata::qat_weight"), {n->input(1), per_channel, enabled}));
    } else {
      Node* bn = t.bn;
      Value* bias = n->input(2);
      for (size_t i : {1, 4, 7}) hoist(bn->input(i), n, m);
      n->replaceInput(1, g.insert(sym("strata::qat_bn_weight"),
                                  {n->input(1), bn->input(1), bn->input(4), bn->input(7),
                                   per_channel, enabled}));
      n->replaceInput(2, g.insertConstant(c10::IValue()));
      jit::WithInsertPoint after(n->next());
      Value* y = g.insert(sym("strata::qat_bn_output"),
                          {n->output(), bn->input(1), bn->input(4), bn->input(7), bias, enabled});
      bn->replaceInput(0, y);
    }
    ++weights_;
  }

  // Activations: an observer and fake quantization each.
  observers_ = std::make_shared<torch::nn::Module>("QatObservers");
  const int64_t qmax = s_.reduce_range ? 127 : 255;
  std::unordered_map<const Value*, Value*> quantized;
  for (size_t i = 0; i < points.size(); ++i) {
    Value* v = points[i].value;
    keys_.push_back(points[i].key);
    at::Tensor state = observers_->register_buffer(
        "point" + std::to_string(i), at::zeros({3}, at::TensorOptions(at::kFloat).device(device)));
    Node* def = v->node();
    jit::WithInsertPoint guard(def->kind() == c10::prim::Param ? *g.nodes().begin() : def->next());
    Value* q = g.insert(sym("strata::qat_activation"),
                        {v, g.insertConstant(state), observe, enabled, s_.averaging_constant, qmax});
    quantized[v] = q;
  }
  // An average of int8 values is rounded to their grid again.
  for (const auto& [n, origin] : regrid) {
    const auto idx = static_cast<size_t>(
        std::find_if(points.begin(), points.end(), [&](const Point& p) { return p.value == origin; }) -
        points.begin());
    STRATA_INTERNAL_ASSERT(idx < points.size(), "an int8 value without its point");
    jit::WithInsertPoint guard(n->next());
    Value* y = n->output();
    Value* q = g.insert(sym("strata::qat_activation"),
                        {y, g.insertConstant(observers_->named_buffers()[str("point", idx)]), false,
                         enabled, s_.averaging_constant, qmax});
    y->replaceAllUsesWith(q);
    q->node()->replaceInput(0, y);
  }
  // Every reader of an op's output reads the quantized value (a float
  // reader of the int8 model reads its dequantized copy); only the int8
  // ops read a float input's quantized copy.
  for (const Point& p : points) {
    if (!p.output) continue;
    Value* q = quantized.at(p.value);
    p.value->replaceAllUsesWith(q);
    q->node()->replaceInput(0, p.value);
  }
  for (const Target& t : targets) {
    Node* n = t.node;
    for (size_t i = 0; i < (is(n, "aten::add") ? 2u : 1u); ++i) {
      const auto it = quantized.find(n->input(i));
      if (it != quantized.end()) n->replaceInput(i, it->second);
    }
  }

  // The mode flags the trace recorded as constants (evaluation) become the inputs.
  for (Node* n : g.nodes()) {
    if (is(n, "aten::batch_norm")) n->replaceInput(5, bn_batch);
    if (is(n, "aten::dropout") || is(n, "aten::dropout_")) n->replaceInput(2, training);
  }
  code_ = std::make_unique<jit::Code>(graph_, "qat_forward");
}

bool QatGraph::observing() const {
  return step_ >= s_.start_step && !(s_.freeze_observer_step > 0 && step_ >= s_.freeze_observer_step);
}

void QatGraph::average_over(dist::Communicator& group, at::Device transport) {
  std::vector<at::Tensor> states;
  for (const auto& b : observers_->named_buffers()) states.push_back(b.value());
  at::Tensor all = at::cat(states).to(transport);
  group.all_reduce(all, dist::ReduceOp::kAvg)->wait();
  torch::NoGradGuard no_grad;
  int64_t at = 0;
  for (at::Tensor& s : states) {
    s.copy_(all.narrow(0, at, s.numel()));
    at += s.numel();
  }
}

at::Tensor QatGraph::forward(const at::Tensor& x) {
  const bool training = model_.is_training();
  const bool active = step_ >= s_.start_step;
  const bool frozen_bn = s_.freeze_bn_step > 0 && step_ >= s_.freeze_bn_step;
  jit::InterpreterState state(*code_);
  jit::Stack stack{traced_._ivalue(), x, training, training && !frozen_bn,
                   training && observing(), active};
  state.run(stack);
  return stack.at(0).toTensor();
}

std::map<std::string, std::pair<double, double>> QatGraph::ranges() const {
  std::map<std::string, std::pair<double, double>> out;
  size_t i = 0;
  for (const auto& b : observers_->named_buffers()) {
    const at::Tensor s = b.value().cpu();
    if (s[2].item<double>() > 0) out[keys_.at(i)] = {s[0].item<double>(), s[1].item<double>()};
    ++i;
  }
  return out;
}

void save_qat_ranges(const std::map<std::string, std::pair<double, double>>& ranges,
                     const std::string& path) {
  std::vector<std::pair<std::string, at::Tensor>> dict;
  for (const auto& [key, r] : ranges) {
    dict.emplace_back(key, at::tensor({r.first, r.second}, at::kFloat));
  }
  save_state_dict(path, dict);
}

std::map<std::string, std::pair<double, double>> load_qat_ranges(const std::string& path) {
  std::map<std::string, std::pair<double, double>> out;
  for (const auto& [key, t] : load_state_dict(path)) {
    STRATA_CHECK_T(ConfigError, t.numel() == 2 && t.is_floating_point(), path,
                   ": entry '", key, "' is not an activation range [lo, hi]; is this a qat.pt "
                   "written by a strata-train run with train.qat?");
    const at::Tensor r = t.to(at::kDouble);
    out[key] = {r[0].item<double>(), r[1].item<double>()};
  }
  return out;
}

}  // namespace strata::train
