#include "trainer/onnx.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <limits>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/fs.h"

namespace strata::train {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;
using onnx::TensorProto;

namespace {

constexpr int64_t kOpset = 17;

int32_t onnx_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return TensorProto::FLOAT;
    case at::kDouble: return TensorProto::DOUBLE;
    case at::kHalf: return TensorProto::FLOAT16;
    case at::kBFloat16: return TensorProto::BFLOAT16;
    case at::kLong: return TensorProto::INT64;
    case at::kInt: return TensorProto::INT32;
    case at::kBool: return TensorProto::BOOL;
    case at::kByte:
    case at::kQUInt8: return TensorProto::UINT8;
    case at::kChar:
    case at::kQInt8: return TensorProto::INT8;
    default: throw ConfigError(str("ONNX export: tensors of type ", t, " have no ONNX type here"));
  }
}

class Writer {
 public:
  Writer(const FrozenGraph& fg, onnx::GraphProto* g) : fg_(fg), g_(g) {}

  // Runs the graph on `example` and keeps every tensor it computes (Note
  // [Writing ONNX from the frozen graph]).
  void record(const at::Tensor& example) {
    jit::Graph& graph = *fg_.graph;
    std::vector<Value*> values;
    for (Node* n : graph.nodes()) {
      for (Value* o : n->outputs()) {
        if (o->type()->kind() == c10::TypeKind::TensorType) values.push_back(o);
      }
    }
    fg_.observe(values, {example}, [&](const std::vector<at::Tensor>& seen) {
      for (size_t i = 0; i < values.size(); ++i) seen_[values[i]] = seen[i];
    });
    seen_[graph.inputs()[1]] = example;
    // Static nodes: all inputs static, and tensors or the constants read as
    // attributes (an op on a static custom class -- packed int8 weights --
    // is not: it runs on the input).
    for (Node* n : graph.nodes()) {
      bool s = true;
      for (Value* in : n->inputs()) s = s && is_static(in->node());
      for (Value* o : n->outputs()) {
        s = s && (o->type()->kind() == c10::TypeKind::TensorType ||
                  n->kind() == c10::prim::Constant || n->kind() == c10::prim::ListConstruct);
      }
      if (s) static_.insert(n);
    }
  }

  void write() {
    jit::Graph& graph = *fg_.graph;
    Value* x = graph.inputs()[1];
    names_[x] = "input";
    STRATA_CHECK(graph.outputs().size() == 1, "ONNX export: the graph returns ",
                 graph.outputs().size(), " values; one output is supported");
    output_ = graph.outputs()[0];
    declare(g_->add_input(), "input", seen_.at(x));
    for (Node* n : graph.nodes()) {
      if (n->kind() == c10::prim::Constant || n->kind() == c10::prim::ListConstruct) continue;
      if (is_static(n)) continue;  // written as an initializer where it is read
      emit(n);
    }
    const at::Tensor& y = seen_.at(output_);
    STRATA_CHECK_T(ConfigError, !y.is_quantized(), "ONNX export: the graph returns a quantized tensor");
    if (name(output_) != "output") node("Identity", {name(output_)}, {"output"});
    declare(g_->add_output(), "output", y);
  }

  int64_t initializer_bytes() const { return initializer_bytes_; }

 private:
  // Whether `n`'s outputs do not depend on the input (marked in graph
  // order by record()).
  bool is_static(const Node* n) const { return static_.count(n) != 0; }

  void declare(onnx::ValueInfoProto* info, const std::string& name, const at::Tensor& t) {
    info->set_name(name);
    auto* type = info->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx_type(t.scalar_type()));
    auto* shape = type->mutable_shape();
    for (int64_t d = 0; d < t.dim(); ++d) {
      auto* dim = shape->add_dim();
      if (d == 0) {
        dim->set_dim_param("batch");
      } else {
        dim->set_dim_value(t.size(d));
      }
    }
  }

  std::string fresh(const std::string& prefix) { return prefix + "_" + std::to_string(counter_++); }

  std::string initializer(const at::Tensor& value, const std::string& hint) {
    at::Tensor t = value.is_quantized() ? value.int_repr() : value;
    t = t.detach().cpu().contiguous();
    std::string name = hint.empty() ? fresh("const") : hint;
    while (!used_names_.insert(name).second) name = hint + "_" + std::to_string(counter_++);
    auto* init = g_->add_initializer();
    init->set_name(name);
    init->set_data_type(onnx_type(t.scalar_type()));
    for (const int64_t d : t.sizes()) init->add_dims(d);
    const auto bytes = static_cast<size_t>(t.numel() * t.element_size());
    init->set_raw_data(std::string(static_cast<const char*>(t.data_ptr()), bytes));
    initializer_bytes_ += static_cast<int64_t>(bytes);
    return name;
  }

  template <typename T>
  std::string scalar(T v, at::ScalarType dtype) {
    return initializer(at::scalar_tensor(v, at::TensorOptions().dtype(dtype)), "");
  }
  std::string ints(const std::vector<int64_t>& v) {
    return initializer(at::tensor(v, at::kLong), "");
  }

  // The ONNX name of `v`: an emitted value, or a static tensor written
  // once as an initializer.
  std::string name(Value* v) {
    if (const auto it = names_.find(v); it != names_.end()) return it->second;
    at::Tensor t;
    if (const auto iv = jit::toIValue(v); iv && iv->isTensor()) {
      t = iv->toTensor();
    } else if (const auto it = seen_.find(v); it != seen_.end() && is_static(v->node())) {
      t = it->second;
    } else {
      throw InternalError(str("bug in Strata: ONNX export reads %", v->debugName(),
                              " before it is written"));
    }
    return names_[v] = initializer(t, fg_.name_of(v));
  }

  std::string out(Value* v) {
    if (v == output_) return names_[v] = "output";
    std::string n = "v" + std::to_string(v->unique());
    used_names_.insert(n);
    return names_[v] = n;
  }

  onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& in,
                        const std::vector<std::string>& outs) {
    auto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(fresh(op));
    for (const auto& i : in) n->add_input(i);
    for (const auto& o : outs) n->add_output(o);
    return n;
  }
  // One node with one new output; returns the output's name.
  std::string op1(const std::string& op, const std::vector<std::string>& in) {
    const std::string o = fresh("t");
    node(op, in, {o});
    return o;
  }

  static void attr(onnx::NodeProto* n, const std::string& name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& name, float v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (const int64_t x : v) a->add_ints(x);
  }

  c10::IValue constant(Node* n, size_t i) {
    const auto iv = constant_of(n->input(i));
    STRATA_CHECK_T(ConfigError, iv.has_value(), "ONNX export: input ", i, " of ",
                   n->kind().toQualString(), " depends on the model's input; only constants "
                   "are supported there");
    return *iv;
  }
  int64_t rank(Value* v) { return seen_.at(v).dim(); }
  bool quantized(Value* v) {
    const auto it = seen_.find(v);
    return it != seen_.end() && it->second.is_quantized();
  }
  static int64_t axis(int64_t d, int64_t rank) { return d < 0 ? d + rank : d; }

  // QDQ helpers: the float value of quantized `q`, and `f` quantized with
  // the parameters `out` was computed with.
  std::string dequantized(Value* q) {
    const at::Tensor& t = seen_.at(q);
    return op1("DequantizeLinear", {name(q), scalar(static_cast<float>(t.q_scale()), at::kFloat),
                                    scalar(static_cast<uint8_t>(t.q_zero_point()), at::kByte)});
  }
  void requantize(const std::string& f, Value* out_v) {
    const at::Tensor& t = seen_.at(out_v);
    node("QuantizeLinear",
         {f, scalar(static_cast<float>(t.q_scale()), at::kFloat),
          scalar(static_cast<uint8_t>(t.q_zero_point()), at::kByte)},
         {out(out_v)});
  }
  std::string dequantized_weight(const at::Tensor& w, const std::string& hint) {
    const std::string q = initializer(w.int_repr(), hint);
    if (w.qscheme() == at::kPerChannelAffine) {
      auto* n = node("DequantizeLinear",
                     {q, initializer(w.q_per_channel_scales().to(at::kFloat), hint + ".scale"),
                      initializer(w.q_per_channel_zero_points().to(at::kChar), hint + ".zero_point")},
                     {fresh("t")});
      attr(n, "axis", int64_t{0});
      return n->output(0);
    }
    return op1("DequantizeLinear", {q, scalar(static_cast<float>(w.q_scale()), at::kFloat),
                                    scalar(static_cast<int8_t>(w.q_zero_point()), at::kChar)});
  }

  static std::vector<int64_t> list(const c10::IValue& v) { return v.toIntVector(); }

  void conv(const std::string& x, const std::string& w, const std::string& b,
            const std::vector<int64_t>& kernel, std::vector<int64_t> stride,
            std::vector<int64_t> pad, std::vector<int64_t> dil, int64_t groups,
            const std::string& y) {
    std::vector<std::string> in{x, w};
    if (!b.empty()) in.push_back(b);
    auto* c = node("Conv", in, {y});
    attr(c, "kernel_shape", kernel);
    attr(c, "strides", stride);
    std::vector<int64_t> pads = pad;
    pads.insert(pads.end(), pad.begin(), pad.end());
    attr(c, "pads", pads);
    attr(c, "dilations", dil);
    attr(c, "group", groups);
  }

  // linear: Gemm for a matrix with a bias, MatMul (+ Add) otherwise.
  // Writes into `y` (a new name when empty); returns it.
  // `w_name` writes the weight (only when Gemm reads it as it is).
  std::string linear(const std::string& x, int64_t x_rank,
                     const std::function<std::string()>& w_name, const at::Tensor& w,
                     bool w_is_float_constant, const std::string& b, const std::string& hint,
                     std::string y = "") {
    if (y.empty()) y = fresh("t");
    if (x_rank == 2 && !b.empty()) {
      attr(node("Gemm", {x, w_name(), b}, {y}), "transB", int64_t{1});
      return y;
    }
    const std::string wt =
        w_is_float_constant ? initializer(w.t().contiguous(), hint + ".T")
                            : [&] {
                                auto* t = node("Transpose", {w_name()}, {fresh("t")});
                                attr(t, "perm", std::vector<int64_t>{1, 0});
                                return t->output(0);
                              }();
    if (b.empty()) {
      node("MatMul", {x, wt}, {y});
    } else {
      node("Add", {op1("MatMul", {x, wt}), b}, {y});
    }
    return y;
  }

  std::string optional_tensor(Value* v) {
    const auto iv = jit::toIValue(v);
    if (iv && iv->isNone()) return "";
    return name(v);
  }

  void emit(Node* n) {
    const std::string kind = n->kind().toQualString();
    Value* o = n->outputs().size() == 1 ? n->output() : nullptr;
    auto input = [&](size_t i) { return name(n->input(i)); };
    if (kind == "aten::conv2d") {
      const at::Tensor w = constant(n, 1).toTensor();
      conv(input(0), input(1), optional_tensor(n->input(2)),
           {w.size(2), w.size(3)}, list(constant(n, 3)), list(constant(n, 4)),
           list(constant(n, 5)), constant(n, 6).toInt(), out(o));
    } else if (kind == "aten::batch_norm") {
      const at::Tensor mean = constant(n, 3).toTensor();
      const auto w = jit::toIValue(n->input(1));
      const auto b = jit::toIValue(n->input(2));
      auto* bn = node("BatchNormalization",
                      {input(0), w->isNone() ? initializer(at::ones_like(mean), "") : input(1),
                       b->isNone() ? initializer(at::zeros_like(mean), "") : input(2), input(3),
                       input(4)},
                      {out(o)});
      attr(bn, "epsilon", static_cast<float>(constant(n, 7).toDouble()));
    } else if (kind == "aten::relu" || kind == "aten::relu_") {
      if (quantized(n->input(0))) {  // relu of uint8 values: max with the zero point
        const at::Tensor& t = seen_.at(n->input(0));
        node("Max", {input(0), scalar(static_cast<uint8_t>(t.q_zero_point()), at::kByte)}, {out(o)});
      } else {
        node("Relu", {input(0)}, {out(o)});
      }
    } else if (kind == "aten::max_pool2d") {
      const auto k = list(constant(n, 1));
      auto s = list(constant(n, 2));
      if (s.empty()) s = k;
      const auto p = list(constant(n, 3));
      auto* m = node("MaxPool", {input(0)}, {out(o)});
      attr(m, "kernel_shape", k);
      attr(m, "strides", s);
      attr(m, "pads", std::vector<int64_t>{p[0], p[1], p[0], p[1]});
      attr(m, "dilations", list(constant(n, 4)));
      attr(m, "ceil_mode", static_cast<int64_t>(constant(n, 5).toBool()));
    } else if (kind == "aten::flatten") {
      const int64_t r = rank(n->input(0));
      const int64_t start = axis(constant(n, 1).toInt(), r), end = axis(constant(n, 2).toInt(), r);
      STRATA_CHECK_T(ConfigError, end == r - 1, "ONNX export: flatten(", start, ", ", end,
                     ") of a rank-", r, " tensor: only flattening to the last dimension is supported");
      if (start == 1) {
        attr(node("Flatten", {input(0)}, {out(o)}), "axis", int64_t{1});
      } else {
        std::vector<int64_t> shape(static_cast<size_t>(start), 0);
        shape.push_back(-1);
        node("Reshape", {input(0), ints(shape)}, {out(o)});
      }
    } else if (kind == "aten::linear") {
      const at::Tensor w = constant(n, 1).toTensor();
      linear(input(0), rank(n->input(0)), [&] { return input(1); }, w, true,
             optional_tensor(n->input(2)), fg_.name_of(n->input(1)), out(o));
    } else if (kind == "aten::add" || kind == "aten::mul" || kind == "aten::sub" ||
               kind == "aten::div") {
      if (n->inputs().size() == 3) {
        STRATA_CHECK_T(ConfigError, constant(n, 2).toScalar().toDouble() == 1.0,
                       "ONNX export: ", kind, " with alpha other than 1");
      }
      const at::Tensor& a = seen_.at(n->input(0));
      std::string b;
      if (n->input(1)->type()->kind() == c10::TypeKind::TensorType) {
        b = input(1);
      } else {
        b = initializer(at::scalar_tensor(constant(n, 1).toScalar(), a.options()), "");
      }
      const std::string op = kind == "aten::add" ? "Add" : kind == "aten::mul" ? "Mul"
                             : kind == "aten::sub" ? "Sub" : "Div";
      node(op, {input(0), b}, {out(o)});
    } else if (kind == "aten::mean") {
      std::string x = quantized(n->input(0)) ? dequantized(n->input(0)) : input(0);
      const std::string y = quantized(o) ? fresh("t") : out(o);
      auto* m = node("ReduceMean", {x}, {y});
      attr(m, "axes", list(constant(n, 1)));
      attr(m, "keepdims", static_cast<int64_t>(constant(n, 2).toBool()));
      if (quantized(o)) requantize(y, o);
    } else if (kind == "aten::embedding") {
      attr(node("Gather", {input(0), input(1)}, {out(o)}), "axis", int64_t{0});
    } else if (kind == "aten::layer_norm") {
      const auto shape = list(constant(n, 1));
      const at::Tensor& x = seen_.at(n->input(0));
      const auto w = jit::toIValue(n->input(2));
      const auto b = jit::toIValue(n->input(3));
      const at::Tensor ones = at::ones(shape, x.options());
      auto* ln = node("LayerNormalization",
                      {input(0), w->isNone() ? initializer(ones, "") : input(2),
                       b->isNone() ? initializer(at::zeros_like(ones), "") : input(3)},
                      {out(o)});
      attr(ln, "axis", -static_cast<int64_t>(shape.size()));
      attr(ln, "epsilon", static_cast<float>(constant(n, 4).toDouble()));
    } else if (kind == "aten::unflatten") {
      const at::Tensor& x = seen_.at(n->input(0));
      const int64_t d = axis(constant(n, 1).toInt(), x.dim());
      std::vector<int64_t> shape(static_cast<size_t>(d), 0);
      for (const int64_t s : list(constant(n, 2))) shape.push_back(s);
      for (int64_t i = d + 1; i < x.dim(); ++i) shape.push_back(x.size(i));
      node("Reshape", {input(0), ints(shape)}, {out(o)});
    } else if (kind == "aten::reshape" || kind == "aten::view") {
      node("Reshape", {input(0), ints(list(constant(n, 1)))}, {out(o)});
    } else if (kind == "aten::permute") {
      const int64_t r = rank(n->input(0));
      std::vector<int64_t> perm;
      for (const int64_t p : list(constant(n, 1))) perm.push_back(axis(p, r));
      attr(node("Transpose", {input(0)}, {out(o)}), "perm", perm);
    } else if (kind == "aten::transpose" || kind == "aten::t") {
      const int64_t r = rank(n->input(0));
      std::vector<int64_t> perm(static_cast<size_t>(r));
      for (int64_t i = 0; i < r; ++i) perm[static_cast<size_t>(i)] = i;
      const int64_t a = kind == "aten::t" ? 0 : axis(constant(n, 1).toInt(), r);
      const int64_t b = kind == "aten::t" ? 1 : axis(constant(n, 2).toInt(), r);
      std::swap(perm[static_cast<size_t>(a)], perm[static_cast<size_t>(b)]);
      attr(node("Transpose", {input(0)}, {out(o)}), "perm", perm);
    } else if (kind == "aten::select") {
      const int64_t r = rank(n->input(0));
      auto* g = node("Gather", {input(0), scalar(constant(n, 2).toInt(), at::kLong)}, {out(o)});
      attr(g, "axis", axis(constant(n, 1).toInt(), r));
    } else if (kind == "aten::matmul") {
      node("MatMul", {input(0), input(1)}, {out(o)});
    } else if (kind == "aten::masked_fill") {
      const at::Tensor& x = seen_.at(n->input(0));
      std::string mask = input(1);
      if (seen_.at(n->input(1)).scalar_type() != at::kBool) {
        auto* c = node("Cast", {mask}, {fresh("t")});
        attr(c, "to", static_cast<int64_t>(TensorProto::BOOL));
        mask = c->output(0);
      }
      const std::string value =
          initializer(at::scalar_tensor(constant(n, 2).toScalar(), x.options()), "");
      node("Where", {mask, value, input(0)}, {out(o)});
    } else if (kind == "aten::softmax") {
      attr(node("Softmax", {input(0)}, {out(o)}), "axis", constant(n, 1).toInt());
    } else if (kind == "aten::scaled_dot_product_attention") {
      // LibTorch >= 2 (a transformer's causal attention): softmax(Q K^T * scale
      // [+ causal mask]) V, as its math kernel computes it; evaluation, so
      // no dropout. The mask is a constant of the traced sequence length.
      const at::Tensor& q = seen_.at(n->input(0));
      const at::Tensor& k = seen_.at(n->input(1));
      STRATA_CHECK_T(ConfigError, constant(n, 3).isNone() && constant(n, 4).toDouble() == 0.0,
                     "ONNX export: scaled_dot_product_attention with an attention mask or "
                     "dropout is not supported; export --format torchscript instead");
      const bool causal = constant(n, 5).toBool();
      const c10::IValue scale_iv = n->inputs().size() > 6 ? constant(n, 6) : c10::IValue();
      const double scale = scale_iv.isNone() ? 1.0 / std::sqrt(static_cast<double>(q.size(-1)))
                                             : scale_iv.toDouble();
      const int64_t r = q.dim();
      std::vector<int64_t> perm(static_cast<size_t>(r));
      for (int64_t i = 0; i < r; ++i) perm[static_cast<size_t>(i)] = i;
      std::swap(perm[static_cast<size_t>(r - 1)], perm[static_cast<size_t>(r - 2)]);
      const std::string kt = fresh("t");
      attr(node("Transpose", {input(1)}, {kt}), "perm", perm);
      std::string scores = op1("Mul", {op1("MatMul", {input(0), kt}),
                                       initializer(at::scalar_tensor(scale, q.options()), "")});
      if (causal) {
        const int64_t t = q.size(-2), s = k.size(-2);
        const at::Tensor future = at::ones({t, s}, q.options().dtype(at::kBool)).triu(1);
        const at::Tensor mask = at::zeros({t, s}, q.options())
                                    .masked_fill(future, -std::numeric_limits<double>::infinity());
        scores = op1("Add", {scores, initializer(mask, "")});
      }
      const std::string probs = fresh("t");
      attr(node("Softmax", {scores}, {probs}), "axis", int64_t{-1});
      node("MatMul", {probs, input(2)}, {out(o)});
    } else if (kind == "aten::gelu") {
      const at::Tensor& x = seen_.at(n->input(0));
      auto c = [&](double v) { return initializer(at::scalar_tensor(v, x.options()), ""); };
      std::string inner;
      if (constant(n, 1).toStringRef() == "tanh") {  // sqrt(2/pi) (x + 0.044715 x^3)
        const std::string cube = op1("Mul", {op1("Mul", {input(0), input(0)}), input(0)});
        inner = op1("Tanh", {op1("Mul", {c(0.7978845608028654),
                                          op1("Add", {input(0), op1("Mul", {c(0.044715), cube})})})});
      } else {  // erf(x / sqrt 2)
        inner = op1("Erf", {op1("Div", {input(0), c(std::sqrt(2.0))})});
      }
      node("Mul", {op1("Mul", {input(0), c(0.5)}), op1("Add", {inner, c(1.0)})}, {out(o)});
    } else if (kind == "aten::dropout" || kind == "aten::contiguous" || kind == "aten::detach") {
      node("Identity", {input(0)}, {out(o)});
    } else if (kind == "aten::quantize_per_tensor") {
      node("QuantizeLinear",
           {input(0), scalar(static_cast<float>(constant(n, 1).toDouble()), at::kFloat),
            scalar(static_cast<uint8_t>(constant(n, 2).toInt()), at::kByte)},
           {out(o)});
    } else if (kind == "aten::dequantize") {
      const at::Tensor& t = seen_.at(n->input(0));
      node("DequantizeLinear",
           {input(0), scalar(static_cast<float>(t.q_scale()), at::kFloat),
            scalar(static_cast<uint8_t>(t.q_zero_point()), at::kByte)},
           {out(o)});
    } else if (kind == "quantized::conv2d" || kind == "quantized::conv2d_relu") {
      const c10::IValue packed = constant(n, 1);
      auto call = [&](const char* op) {
        jit::Stack s{packed};
        c10::Dispatcher::singleton().findSchemaOrThrow(op, "").callBoxed(&s);
        return s;
      };
      const jit::Stack unpacked = call("quantized::conv2d_unpack");
      const at::Tensor w = unpacked.at(0).toTensor();
      const std::string hint = fg_.name_of(n->input(1));
      const std::string b = unpacked.at(1).isNone() ? std::string()
                                                    : initializer(unpacked.at(1).toTensor(), hint + ".bias");
      const std::string y = fresh("t");
      conv(dequantized(n->input(0)), dequantized_weight(w, hint), b, {w.size(2), w.size(3)},
           call("quantized::conv2d_stride").at(0).toIntVector(),
           call("quantized::conv2d_padding").at(0).toIntVector(),
           call("quantized::conv2d_dilation").at(0).toIntVector(),
           call("quantized::conv2d_groups").at(0).toInt(), y);
      requantize(kind == "quantized::conv2d_relu" ? op1("Relu", {y}) : y, o);
    } else if (kind == "quantized::linear" || kind == "quantized::linear_relu") {
      jit::Stack s{constant(n, 1)};
      c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_unpack", "").callBoxed(&s);
      const at::Tensor w = s.at(0).toTensor();
      const std::string hint = fg_.name_of(n->input(1));
      const std::string b = s.at(1).isNone() ? std::string()
                                             : initializer(s.at(1).toTensor(), hint + ".bias");
      const std::string y = linear(dequantized(n->input(0)), rank(n->input(0)),
                                   [&] { return dequantized_weight(w, hint); }, w, false, b, hint);
      requantize(kind == "quantized::linear_relu" ? op1("Relu", {y}) : y, o);
    } else if (kind == "quantized::add" || kind == "quantized::add_relu") {
      const std::string y = op1("Add", {dequantized(n->input(0)), dequantized(n->input(1))});
      requantize(kind == "quantized::add_relu" ? op1("Relu", {y}) : y, o);
    } else {
      throw ConfigError(str("ONNX export: the model uses ", kind,
                            ", which Strata's ONNX writer has no mapping for",
                            kind == "quantized::linear_dynamic"
                                ? " (dynamic int8 has no QDQ form; export --quantize static)"
                                : "; export --format torchscript instead"));
    }
  }

  const FrozenGraph& fg_;
  onnx::GraphProto* g_;
  std::unordered_map<const Value*, at::Tensor> seen_;
  std::unordered_map<const Value*, std::string> names_;
  std::unordered_set<const Node*> static_;
  std::unordered_set<std::string> used_names_{"input", "output"};
  Value* output_ = nullptr;
  int64_t counter_ = 0;
  int64_t initializer_bytes_ = 0;
};

}  // namespace

OnnxReport save_onnx(const FrozenGraph& g, const at::Tensor& example, const std::string& path,
                     const std::string& producer) {
  torch::NoGradGuard no_grad;
  onnx::ModelProto model;
  model.set_ir_version(onnx::IR_VERSION);
  model.set_producer_name("strata");
  model.set_producer_version(producer);
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOpset);
  auto* graph = model.mutable_graph();
  graph->set_name("strata_model");
  Writer w(g, graph);
  w.record(example);
  w.write();
  try {
    onnx::checker::check_model(model);
  } catch (const std::exception& e) {
    throw Error(str("ONNX export: the ONNX checker refuses the model: ", e.what()));
  }
  std::string bytes;
  STRATA_CHECK(model.SerializeToString(&bytes), "ONNX export: the model does not serialise");
  atomic_write_file(path, bytes);
  OnnxReport r;
  r.opset = kOpset;
  r.nodes = graph->node_size();
  for (const auto& n : graph->node()) ++r.ops[n.op_type()];
  r.initializer_bytes = w.initializer_bytes();
  return r;
}

}  // namespace strata::train
