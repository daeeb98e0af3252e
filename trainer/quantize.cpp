#include "trainer/quantize.h"

#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/shape_analysis.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <cmath>
#include <limits>
#include <optional>
#include <unordered_set>

#include "core/error.h"

namespace strata::train {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

namespace {

c10::Symbol sym(const char* qualified) { return c10::Symbol::fromQualString(qualified); }

bool is(const Node* n, const char* qualified) { return n->kind() == sym(qualified); }

std::optional<at::Tensor> constant_tensor(Value* v) {
  const auto iv = jit::toIValue(v);
  if (!iv || !iv->isTensor()) return std::nullopt;
  return iv->toTensor();
}

// An optional tensor input: nullopt when it is not a constant, an undefined
// tensor when it is the constant None.
std::optional<at::Tensor> constant_optional_tensor(Value* v) {
  const auto iv = jit::toIValue(v);
  if (!iv) return std::nullopt;
  if (iv->isNone()) return at::Tensor();
  if (!iv->isTensor()) return std::nullopt;
  return iv->toTensor();
}

// Drops the names of constants that are no longer in the graph (their
// Values are freed, and a new Value may reuse the address).
void prune_names(FrozenGraph& g) {
  std::unordered_set<const Value*> live;
  for (Node* n : g.graph->nodes()) {
    for (Value* o : n->outputs()) live.insert(o);
  }
  for (auto it = g.names.begin(); it != g.names.end();) {
    it = live.count(it->first) ? std::next(it) : g.names.erase(it);
  }
}

// The point just after `v` is defined (the graph's start for an input).
Node* after_definition(jit::Graph& g, Value* v) {
  return v->node()->kind() == c10::prim::Param ? *g.nodes().begin() : v->node()->next();
}

c10::IValue call_op(const char* name, jit::Stack stack) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  op.callBoxed(&stack);
  return stack.at(0);
}

bool is_relu(const Node* n) { return is(n, "aten::relu") || is(n, "aten::relu_"); }

// The ReLU that alone reads `v`, if any.
Node* sole_relu_reader(Value* v) {
  if (v->uses().size() != 1) return nullptr;
  Node* user = v->uses()[0].user;
  return is_relu(user) ? user : nullptr;
}

}  // namespace

// Ops that take a quantized tensor and return one with the same scale and
// zero point (Note [Post-training quantization]).
bool int8_passes_through(const Node* n) {
  return is(n, "aten::max_pool2d") || is(n, "aten::flatten") || is_relu(n) ||
         is(n, "aten::reshape") || is(n, "aten::view") || is(n, "aten::mean") ||
         is(n, "aten::adaptive_avg_pool2d") || is(n, "aten::avg_pool2d") ||
         (is(n, "aten::dropout") && jit::toIValue(n->input(2)) == c10::IValue(false));
}

std::string activation_point(size_t op_index, const std::string& layer, const char* role) {
  return str(op_index, ":", layer, ":", role);
}

namespace {

// A range observer over the calibration batches.
struct RangeObserver {
  ObserverKind kind;
  double averaging, percentile;
  double lo = 0, hi = 0;
  int64_t batches = 0;

  void update(const at::Tensor& t) {
    const at::Tensor x = t.detach().to(at::kFloat).flatten();
    double blo, bhi;
    if (kind == ObserverKind::kPercentile) {
      const int64_t n = x.numel();
      const auto k = std::clamp<int64_t>(
          static_cast<int64_t>(std::ceil(percentile / 100.0 * static_cast<double>(n))), 1, n);
      bhi = std::get<0>(x.kthvalue(k)).item<double>();
      blo = std::get<0>(x.kthvalue(n - k + 1)).item<double>();
    } else {
      blo = x.min().item<double>();
      bhi = x.max().item<double>();
    }
    if (batches == 0) {
      lo = blo;
      hi = bhi;
    } else if (kind == ObserverKind::kMinMax) {
      lo = std::min(lo, blo);
      hi = std::max(hi, bhi);
    } else if (kind == ObserverKind::kMovingAverage) {
      lo += averaging * (blo - lo);
      hi += averaging * (bhi - hi);
    } else {
      const double n = static_cast<double>(batches);
      lo = (lo * n + blo) / (n + 1);
      hi = (hi * n + bhi) / (n + 1);
    }
    ++batches;
  }
};

// A conv2d, linear or add that static quantization replaces, with the ReLU
// it absorbs.
struct Target {
  Node* node;
  Node* relu;  // or nullptr
  Value* out() const { return relu ? relu->output() : node->output(); }
};

// The traced form of conv2d back to the op itself: aten::_convolution (2-d,
// not transposed) over a constant weight is conv2d; and linear's
// (matmul_to_linear) over constant 2-d weights.
void canonicalize(jit::Graph& g) {
  std::vector<Node*> nodes(g.nodes().begin(), g.nodes().end());
  for (Node* n : nodes) {
    if (!is(n, "aten::_convolution")) continue;
    const auto w = constant_tensor(n->input(1));
    const auto transposed = jit::toIValue(n->input(6));
    if (!w || w->dim() != 4 || !transposed || transposed->toBool()) continue;
    jit::WithInsertPoint guard(n);
    Value* conv = g.insert(c10::aten::conv2d, {n->input(0), n->input(1), n->input(2), n->input(3),
                                               n->input(4), n->input(5), n->input(8)});
    conv->setType(c10::TensorType::get());
    n->output()->replaceAllUsesWith(conv);
    n->destroy();
  }
  matmul_to_linear(g, [](Value* w) {
    const auto t = constant_tensor(w);
    return t && t->dim() == 2;
  });
}

int64_t bytes_of(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

}  // namespace

std::optional<c10::IValue> constant_of(Value* v) {
  if (auto iv = jit::toIValue(v)) return iv;
  if (v->node()->kind() != c10::prim::ListConstruct) return std::nullopt;
  std::vector<int64_t> ints;
  for (Value* e : v->node()->inputs()) {
    const auto iv = jit::toIValue(e);
    if (!iv || !iv->isInt()) return std::nullopt;
    ints.push_back(iv->toInt());
  }
  return c10::IValue(ints);
}

at::Tensor FrozenGraph::run(const at::Tensor& x) const {
  jit::Code code(graph, "forward");
  jit::InterpreterState state(code);
  jit::Stack stack{c10::IValue(), x};
  state.run(stack);
  return stack.at(0).toTensor();
}

void FrozenGraph::observe(const std::vector<Value*>& values, const std::vector<at::Tensor>& batches,
                          const std::function<void(const std::vector<at::Tensor>&)>& seen) const {
  // The values as extra outputs of the graph for the runs, removed after
  // (also when a run throws).
  jit::Graph& g = *graph;
  const size_t first = g.outputs().size();
  struct Restore {
    jit::Graph& g;
    size_t first;
    ~Restore() {
      while (g.outputs().size() > first) g.eraseOutput(g.outputs().size() - 1);
    }
  } restore{g, first};
  for (Value* v : values) g.registerOutput(v);
  jit::Code code(graph, "observe");
  std::vector<at::Tensor> out(values.size());
  for (const at::Tensor& batch : batches) {
    jit::InterpreterState state(code);
    jit::Stack stack{c10::IValue(), batch};
    state.run(stack);
    for (size_t i = 0; i < values.size(); ++i) out[i] = stack.at(first + i).toTensor();
    seen(out);
  }
}

void FrozenGraph::drop_dead() {
  jit::EliminateDeadCode(graph);
  prune_names(*this);
}

std::string FrozenGraph::name_of(const Value* v) const {
  const auto it = names.find(v);
  return it == names.end() ? std::string() : it->second;
}

std::vector<ModuleRead> module_reads(jit::Graph& g, const jit::Module& module) {
  std::vector<ModuleRead> out;
  std::unordered_map<const Value*, std::pair<c10::IValue, std::string>> objects;
  objects[g.inputs()[0]] = {module._ivalue(), ""};
  for (Node* n : g.nodes()) {
    if (n->kind() != c10::prim::GetAttr) continue;
    const auto src = objects.find(n->input());
    STRATA_INTERNAL_ASSERT(src != objects.end(), "a traced GetAttr reads from the module");
    const std::string field = n->s(c10::attr::name);
    const std::string path = src->second.second.empty() ? field : src->second.second + "." + field;
    c10::IValue v = src->second.first.toObjectRef().getAttr(field);
    if (v.isObject()) {
      objects[n->output()] = {v, path};
    } else {
      out.push_back({n, std::move(v), path});
    }
  }
  return out;
}

void matmul_to_linear(jit::Graph& g, const std::function<bool(Value*)>& is_weight) {
  std::vector<Node*> nodes(g.nodes().begin(), g.nodes().end());
  auto transposed_weight = [&](Value* v) -> Value* {
    Node* t = v->node();
    return is(t, "aten::t") && is_weight(t->input()) ? t->input() : nullptr;
  };
  for (Node* n : nodes) {
    jit::WithInsertPoint guard(n);
    Value* y = nullptr;
    if (is(n, "aten::addmm")) {
      Value* w = transposed_weight(n->input(2));
      if (w && jit::toIValue(n->input(3)) == c10::IValue(1) &&
          jit::toIValue(n->input(4)) == c10::IValue(1)) {
        y = g.insert(c10::aten::linear, {n->input(1), w, n->input(0)});
      }
    } else if (is(n, "aten::matmul")) {
      if (Value* w = transposed_weight(n->input(1))) {
        y = g.insert(c10::aten::linear, {n->input(0), w, g.insertConstant(c10::IValue())});
      }
    }
    if (y) {
      y->setType(n->output()->type());
      n->output()->replaceAllUsesWith(y);
      n->destroy();
    }
  }
}

FrozenGraph freeze(const jit::Module& traced) {
  FrozenGraph out;
  out.graph = traced.get_method("forward").graph()->copy();
  jit::Graph& g = *out.graph;
  for (const ModuleRead& r : module_reads(g, traced)) {
    STRATA_CHECK(r.value.isTensor(), "the traced model reads '", r.name, "', which is not a tensor");
    jit::WithInsertPoint guard(r.node);
    Value* c = g.insertConstant(r.value.toTensor().detach());
    out.names[c] = r.name;
    r.node->output()->replaceAllUsesWith(c);
  }
  jit::EliminateDeadCode(out.graph);
  jit::ConstantPropagationImmutableTypes(out.graph);
  canonicalize(g);
  jit::EliminateDeadCode(out.graph);
  // The trace recorded the example's shapes; the graph runs on any batch.
  jit::EraseShapeInformation(out.graph);
  prune_names(out);
  return out;
}

int fold_batchnorm(FrozenGraph& fg) {
  jit::Graph& g = *fg.graph;
  int folded = 0;
  std::vector<Node*> nodes(g.nodes().begin(), g.nodes().end());
  for (Node* n : nodes) {
    if (is(n, "aten::dropout") && jit::toIValue(n->input(2)) == c10::IValue(false)) {
      n->output()->replaceAllUsesWith(n->input(0));
      n->destroy();
      continue;
    }
    if (!is(n, "aten::batch_norm")) continue;
    Node* p = n->input(0)->node();
    const bool conv = is(p, "aten::conv2d"), linear = is(p, "aten::linear");
    if ((!conv && !linear) || n->input(0)->uses().size() != 1) continue;
    const auto w = constant_tensor(p->input(1));
    const auto b = constant_optional_tensor(p->input(2));
    const auto gamma = constant_optional_tensor(n->input(1));
    const auto beta = constant_optional_tensor(n->input(2));
    const auto mean = constant_tensor(n->input(3));
    const auto var = constant_tensor(n->input(4));
    const auto training = jit::toIValue(n->input(5));
    const auto eps = jit::toIValue(n->input(7));
    if (!w || !b || !gamma || !beta || !mean || !var || !training || training->toBool() || !eps) {
      continue;
    }
    // As torch.nn.utils.fuse_conv_bn_weights: w * gamma / sqrt(var + eps),
    // (b - mean) * gamma / sqrt(var + eps) + beta.
    const at::Tensor scale =
        (gamma->defined() ? *gamma : at::ones_like(*var)) * at::rsqrt(*var + eps->toDouble());
    std::vector<int64_t> shape(static_cast<size_t>(w->dim()), 1);
    shape[0] = -1;
    const at::Tensor new_w = *w * scale.reshape(shape);
    const at::Tensor new_b = ((b->defined() ? *b : at::zeros_like(*mean)) - *mean) * scale +
                             (beta->defined() ? *beta : at::zeros_like(*mean));
    jit::WithInsertPoint guard(p);
    Value* wc = g.insertConstant(new_w);
    Value* bc = g.insertConstant(new_b);
    fg.names[wc] = fg.name_of(p->input(1));
    fg.names[bc] = b->defined() ? fg.name_of(p->input(2)) : fg.name_of(n->input(2));
    p->replaceInput(1, wc);
    p->replaceInput(2, bc);
    n->output()->replaceAllUsesWith(p->output());
    n->destroy();
    ++folded;
  }
  fg.drop_dead();
  return folded;
}

jit::Module to_module(const FrozenGraph& fg, const std::string& class_name) {
  auto cu = std::make_shared<jit::CompilationUnit>();
  jit::Module m(c10::QualifiedName("__torch__.strata." + class_name), cu, true);
  auto graph = fg.graph->copy();
  graph->inputs()[0]->setType(m.type());
  auto fn = cu->create_function(c10::QualifiedName(*m.type()->name(), "forward"), graph);
  m.type()->addMethod(fn);
  return m;
}

ObserverKind parse_observer(const std::string& name, const std::string& where) {
  if (name == "minmax") return ObserverKind::kMinMax;
  if (name == "moving_average") return ObserverKind::kMovingAverage;
  if (name == "percentile") return ObserverKind::kPercentile;
  throw ConfigError(str(where, "unknown observer '", name,
                        "'; use minmax, moving_average or percentile"));
}

std::string observer_name(ObserverKind k) {
  switch (k) {
    case ObserverKind::kMinMax: return "minmax";
    case ObserverKind::kMovingAverage: return "moving_average";
    case ObserverKind::kPercentile: return "percentile";
  }
  return "?";
}

namespace {

std::string engine_name(at::QEngine e) {
  std::string name = c10::toString(e);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return name;
}

// FBGEMM's (and x86's) int8 kernels sum pairs of uint8 x int8 products in
// 16 bits, which full-range activations can overflow.
bool needs_reduced_range(const std::string& engine) { return engine == "fbgemm" || engine == "x86"; }

}  // namespace

std::vector<std::string> supported_qengines() {
  std::vector<std::string> out;
  for (const at::QEngine e : at::globalContext().supportedQEngines()) {
    if (engine_name(e) != "noqengine" && engine_name(e) != "none") out.push_back(engine_name(e));
  }
  return out;
}

std::string select_qengine(const std::string& name) {
  const std::vector<std::string> have = supported_qengines();
  auto has = [&](const std::string& e) { return std::find(have.begin(), have.end(), e) != have.end(); };
  std::string pick = name;
  if (name == "auto") {
#if defined(__x86_64__) || defined(_M_X64)
    const std::vector<std::string> order{"onednn", "qnnpack", "x86", "fbgemm"};
#else
    const std::vector<std::string> order{"qnnpack", "onednn", "x86", "fbgemm"};
#endif
    pick.clear();
    for (const auto& e : order) {
      if (has(e)) {
        pick = e;
        break;
      }
    }
    STRATA_CHECK(!pick.empty(), "this LibTorch has no int8 engine; int8 export needs one built "
                 "with QNNPACK, oneDNN or FBGEMM");
  }
  std::string list;
  for (const auto& e : have) list += (list.empty() ? "" : ", ") + e;
  STRATA_CHECK_T(ConfigError, has(pick), "int8 engine '", pick, "' is not in this LibTorch (it has ",
                 list.empty() ? std::string("none") : list, "); use one of those or auto");
  for (const at::QEngine e : at::globalContext().supportedQEngines()) {
    if (engine_name(e) == pick) at::globalContext().setQEngine(e);
  }
  return pick;
}

std::pair<double, int64_t> affine_qparams(double lo, double hi, bool reduce_range) {
  // In float, as torch.ao's observers compute them.
  const int64_t qmax = reduce_range ? 127 : 255;
  const float min_neg = std::min(static_cast<float>(lo), 0.0f);
  const float max_pos = std::max(static_cast<float>(hi), 0.0f);
  const float scale = std::max((max_pos - min_neg) / static_cast<float>(qmax),
                               std::numeric_limits<float>::epsilon());
  const auto zp = static_cast<int64_t>(std::nearbyint(min_neg / scale));
  return {scale, std::clamp<int64_t>(-zp, 0, qmax)};
}

at::Tensor quantize_weight(const at::Tensor& w, bool per_channel) {
  const float eps = std::numeric_limits<float>::epsilon();
  if (!per_channel) {
    const double scale = std::max(w.abs().max().item<float>() / 127.5f, eps);
    return at::quantize_per_tensor(w, scale, 0, at::kQInt8);
  }
  const at::Tensor amax = w.abs().flatten(1).amax(1);
  const at::Tensor scales = (amax / 127.5f).clamp_min(eps).to(at::kDouble);
  return at::quantize_per_channel(w, scales, at::zeros({w.size(0)}, at::kLong), 0, at::kQInt8);
}

QuantReport quantize(FrozenGraph& fg, const QuantOptions& opts,
                     const std::vector<at::Tensor>& calibration) {
  jit::Graph& g = *fg.graph;
  QuantReport report;
  report.engine = select_qengine(opts.engine);
  const bool reduce_range = needs_reduced_range(report.engine);
  torch::NoGradGuard no_grad;
  auto layer_of = [&](Node* n, const char* op, const at::Tensor& w, const at::Tensor& qw) {
    QuantLayer l;
    l.name = fg.name_of(n->input(1));
    l.op = op;
    l.weight_shape = w.sizes().vec();
    l.float_bytes = bytes_of(w);
    l.weight_bytes = qw.numel() + 4 * (opts.per_channel ? qw.size(0) : 1);
    const at::Tensor scales = opts.per_channel ? qw.q_per_channel_scales()
                                               : at::full({1}, qw.q_scale(), at::kDouble);
    l.weight_scale_min = scales.min().item<double>();
    l.weight_scale_max = scales.max().item<double>();
    return l;
  };
  auto prepack = [&](Node* n, const at::Tensor& qw, const at::Tensor& bias) {
    const c10::IValue b = bias.defined() ? c10::IValue(bias) : c10::IValue();
    if (is(n, "aten::linear")) return call_op("quantized::linear_prepack", {qw, b});
    return call_op("quantized::conv2d_prepack",
                   {qw, b, constant_of(n->input(3))->toIntVector(),
                    constant_of(n->input(4))->toIntVector(), constant_of(n->input(5))->toIntVector(),
                    constant_of(n->input(6))->toInt()});
  };
  // A conv2d or linear with constant weights (and bias, strides, ...).
  auto quantizable = [&](Node* n) {
    if (is(n, "aten::linear")) {
      return constant_tensor(n->input(1)).has_value() &&
             constant_optional_tensor(n->input(2)).has_value();
    }
    if (!is(n, "aten::conv2d")) return false;
    for (size_t i = 1; i < n->inputs().size(); ++i) {
      if (!constant_of(n->input(i))) return false;
    }
    return true;
  };
  std::vector<Node*> nodes(g.nodes().begin(), g.nodes().end());
  for (Node* n : nodes) {
    if ((is(n, "aten::linear") || is(n, "aten::conv2d")) && !quantizable(n)) ++report.float_ops_kept;
  }

  if (opts.mode == QuantMode::kDynamic) {
    for (Node* n : nodes) {
      if (!is(n, "aten::linear") || !quantizable(n)) continue;
      const at::Tensor w = *constant_tensor(n->input(1));
      const at::Tensor qw = quantize_weight(w, opts.per_channel);
      jit::WithInsertPoint guard(n);
      Value* packed = g.insertConstant(prepack(n, qw, *constant_optional_tensor(n->input(2))));
      Value* y = g.insert(sym("quantized::linear_dynamic"), {n->input(0), packed, reduce_range});
      n->output()->replaceAllUsesWith(y);
      report.layers.push_back(layer_of(n, "quantized::linear_dynamic", w, qw));
      n->destroy();
    }
    fg.drop_dead();
    return report;
  }

  // Static: the ops to replace, and the values whose ranges they need,
  // each named (Note [QAT ranges]).
  std::vector<Target> targets;
  std::vector<Value*> observed;
  std::vector<std::string> keys;
  std::unordered_map<const Value*, size_t> slot;
  auto observe = [&](Value* v, const std::string& key) {
    if (slot.emplace(v, observed.size()).second) {
      observed.push_back(v);
      keys.push_back(key);
    }
  };
  std::unordered_set<const Node*> absorbed;
  for (Node* n : nodes) {
    const bool add = is(n, "aten::add") && n->inputs().size() == 3 &&
                     n->input(1)->type()->isSubtypeOf(*c10::TensorType::get()) &&
                     !jit::toIValue(n->input(0)) && !jit::toIValue(n->input(1)) &&
                     jit::toIValue(n->input(2)) == c10::IValue(1);
    if (!add && !quantizable(n)) continue;
    Target t{n, sole_relu_reader(n->output())};
    if (t.relu) absorbed.insert(t.relu);
    const size_t k = targets.size();
    const std::string layer = add ? "add" : fg.name_of(n->input(1));
    observe(n->input(0), activation_point(k, layer, "in"));
    if (add) observe(n->input(1), activation_point(k, layer, "in2"));
    observe(t.out(), activation_point(k, layer, "out"));
    targets.push_back(t);
  }
  if (targets.empty()) return report;

  // The ranges: learned (QAT), or observed over the calibration batches.
  std::vector<RangeObserver> ranges(observed.size(),
                                    RangeObserver{opts.observer, opts.averaging_constant,
                                                  opts.percentile});
  if (!opts.ranges.empty()) {
    const std::unordered_set<std::string> ours(keys.begin(), keys.end());
    for (const auto& [key, r] : opts.ranges) {
      STRATA_CHECK_T(ConfigError, ours.count(key), "the QAT activation ranges name '", key,
                     "', which this model's int8 ops do not have: they were learned for "
                     "another model; export the run that learned them, or use --quantize static");
    }
  } else {
    STRATA_CHECK_T(ConfigError, !calibration.empty(),
                   "static quantization needs at least one calibration batch");
    fg.observe(observed, calibration, [&](const std::vector<at::Tensor>& seen) {
      for (size_t i = 0; i < seen.size(); ++i) ranges[i].update(seen[i]);
    });
  }
  auto qparams = [&](Value* v) {
    const size_t i = slot.at(v);
    if (opts.ranges.empty()) return affine_qparams(ranges[i].lo, ranges[i].hi, reduce_range);
    const auto it = opts.ranges.find(keys[i]);
    STRATA_CHECK_T(ConfigError, it != opts.ranges.end(), "the QAT activation ranges have none "
                   "for '", keys[i], "', which this model's int8 ops need: they were learned "
                   "for another model; export the run that learned them, or use --quantize static");
    return affine_qparams(it->second.first, it->second.second, reduce_range);
  };

  // Rewrite in order. `replaced`: float values now computed quantized (their
  // float readers get a dequantize); `quantized_copy`: float values that
  // stay and are also quantized once for the int8 ops that read them.
  std::vector<std::pair<Value*, Value*>> replaced;
  std::unordered_map<const Value*, Value*> as_quantized, quantized_copy;
  std::unordered_map<const Value*, std::pair<double, int64_t>> qparams_of;  // quantized values
  auto quantized_input = [&](Value* v) {
    if (const auto it = as_quantized.find(v); it != as_quantized.end()) return it->second;
    if (const auto it = quantized_copy.find(v); it != quantized_copy.end()) return it->second;
    const auto [scale, zp] = qparams(v);
    jit::WithInsertPoint guard(after_definition(g, v));
    Value* q = g.insert(c10::aten::quantize_per_tensor,
                        {v, scale, zp, static_cast<int64_t>(at::kQUInt8)});
    quantized_copy[v] = q;
    qparams_of[q] = {scale, zp};
    return q;
  };
  size_t next_target = 0;
  for (Node* n : nodes) {
    if (next_target < targets.size() && targets[next_target].node == n) {
      const Target& t = targets[next_target++];
      const auto [scale, zp] = qparams(t.out());
      const bool relu = t.relu != nullptr;
      Value* a = quantized_input(n->input(0));
      Value* b = is(n, "aten::add") ? quantized_input(n->input(1)) : nullptr;
      jit::WithInsertPoint guard(t.out()->node()->next());
      Value* y;
      QuantLayer layer;
      if (b) {
        const char* op = relu ? "quantized::add_relu" : "quantized::add";
        y = g.insert(sym(op), {a, b, scale, zp});
        layer.name = "add";
        layer.op = op;
      } else {
        const bool lin = is(n, "aten::linear");
        const char* op = lin ? (relu ? "quantized::linear_relu" : "quantized::linear")
                             : (relu ? "quantized::conv2d_relu" : "quantized::conv2d");
        const at::Tensor w = *constant_tensor(n->input(1));
        const at::Tensor qw = quantize_weight(w, opts.per_channel);
        Value* packed = g.insertConstant(prepack(n, qw, *constant_optional_tensor(n->input(2))));
        fg.names[packed] = fg.name_of(n->input(1));
        y = g.insert(sym(op), {a, packed, scale, zp});
        layer = layer_of(n, op, w, qw);
      }
      const auto [in_scale, in_zp] = qparams_of.at(a);
      layer.input_scale = in_scale;
      layer.input_zero_point = in_zp;
      qparams_of[y] = {scale, zp};
      layer.output_scale = scale;
      layer.output_zero_point = zp;
      report.layers.push_back(layer);
      as_quantized[t.out()] = y;
      replaced.emplace_back(t.out(), y);
      continue;
    }
    if (absorbed.count(n) || !int8_passes_through(n)) continue;
    const auto it = as_quantized.find(n->input(0));
    if (it == as_quantized.end()) continue;
    Value* qin = it->second;
    Node* c = g.createClone(n, [&](Value* v) { return v == n->input(0) ? qin : v; });
    c->insertAfter(n);
    c->output()->setType(c10::TensorType::get());
    as_quantized[n->output()] = c->output();
    qparams_of[c->output()] = qparams_of.at(qin);
    replaced.emplace_back(n->output(), c->output());
  }
  for (const auto& [v, q] : replaced) {
    if (v->uses().empty()) continue;
    jit::WithInsertPoint guard(q->node()->next());
    v->replaceAllUsesWith(g.insert(c10::aten::dequantize, {q}));
  }
  fg.drop_dead();
  return report;
}

}  // namespace strata::train
