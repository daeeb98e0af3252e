// Recipe loading, emitting and schema documentation: the only translation
// unit that sees yaml-cpp. Each is a Visitor over Recipe::visit (Note [Recipe
// schema] in recipe.h).
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "trainer/recipe.h"

namespace strata::train {
namespace {

// ---- value formatting (shared by the emitter and the schema table) -------

std::string format_value(bool v) { return v ? "true" : "false"; }
std::string format_value(int64_t v) { return std::to_string(v); }
std::string format_value(double v) { return format_double(v); }
std::string format_value(const std::string& v) { return v; }
template <class T>
std::string format_value(const std::vector<T>& v) {
  std::vector<std::string> parts;
  for (const auto& x : v) parts.push_back(format_value(x));
  return "[" + join(parts, ", ") + "]";
}

// Bounds read better without a forced ".0": "> 0", "in [0, 0.99]".
std::string format_bound(double v) {
  return v == static_cast<double>(static_cast<int64_t>(v))
             ? std::to_string(static_cast<int64_t>(v))
             : format_double(v);
}

const char* type_name(bool) { return "bool"; }
const char* type_name(int64_t) { return "int"; }
const char* type_name(double) { return "float"; }
const char* type_name(const std::string&) { return "string"; }
const char* type_name(const std::vector<int64_t>&) { return "list of int"; }
const char* type_name(const std::vector<double>&) { return "list of float"; }
const char* type_name(const std::vector<std::string>&) { return "list of string"; }

// ---- scalar conversion: returns "" on success or what was expected --------

std::string convert(const std::string& s, bool& out) {
  if (s == "true" || s == "True" || s == "yes" || s == "on") {
    out = true;
    return "";
  }
  if (s == "false" || s == "False" || s == "no" || s == "off") {
    out = false;
    return "";
  }
  return "true or false";
}

std::string convert(const std::string& s, int64_t& out) {
  int64_t v = 0;
  auto res = std::from_chars(s.data(), s.data() + s.size(), v);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) {
    return "an integer";
  }
  out = v;
  return "";
}

std::string convert(const std::string& s, double& out) {
  if (s.empty()) return "a number";
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) {
    return "a finite number";
  }
  out = v;
  return "";
}

std::string convert(const std::string& s, std::string& out) {
  out = s;
  return "";
}

// ---- Parser ---------------------------------------------------------------

// Shared by all Parsers of one document.
struct ParseContext {
  std::string source;          // file name
  std::string override_label;  // non-empty when parsing a command-line override
  std::map<std::string, std::string>* origin;

  std::string where(const YAML::Node& n) const {
    if (!override_label.empty()) {
      return "command-line override '" + override_label + "'";
    }
    const YAML::Mark m = n.Mark();
    return m.line >= 0 ? source + ":" + std::to_string(m.line + 1) : source;
  }
};

class Parser {
 public:
  Parser(const YAML::Node& node, std::string prefix, ParseContext& ctx)
      : node_(node), prefix_(std::move(prefix)), ctx_(ctx) {}

  template <class T>
  void field(const char* key, T& value, const Constraint& c, const char*) {
    known_.push_back(key);
    YAML::Node k, v;
    if (!lookup(key, &k, &v)) return;
    const std::string path = prefix_ + key;
    parse(v, path, value, c);
    (*ctx_.origin)[path] = ctx_.where(k);
  }

  template <class S>
  void section(const char* key, S& sub, const char*) {
    known_.push_back(key);
    YAML::Node k, v;
    if (!lookup(key, &k, &v)) return;
    const std::string path = prefix_ + key;
    if (v.IsNull()) return;  // "augment:" with nothing under it
    STRATA_CHECK_T(ConfigError, v.IsMap(), ctx_.where(k), ": '", path,
                   "' must be a mapping of keys (see recipes/README.md)");
    Parser p(v, path + ".", ctx_);
    p.reject_duplicate_keys();
    sub.visit(p);
    p.reject_unknown_keys();
  }

  // YAML leaves a repeated key to the reader (yaml-cpp keeps both and a
  // lookup finds the first), so `run: {name: a, name: b}` would silently
  // mean a: refused, naming both lines.
  void reject_duplicate_keys() const {
    std::map<std::string, YAML::Node> seen;
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.Scalar();
      auto [first, fresh] = seen.emplace(key, it->first);
      if (fresh) continue;
      throw ConfigError(str(ctx_.where(it->first), ": duplicate key '", prefix_, key,
                            "' (first at ", ctx_.where(first->second),
                            "); keep one of them"));
    }
  }

  void reject_unknown_keys() const {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.Scalar();
      bool known = false;
      for (const auto& k : known_) known = known || k == key;
      if (known) continue;
      std::string hint = closest_match(key, known_);
      std::string scope = prefix_.empty()
                              ? "at the top level"
                              : "under '" + prefix_.substr(0, prefix_.size() - 1) + "'";
      throw ConfigError(str(
          ctx_.where(it->first), ": unknown key '", prefix_, key, "'",
          hint.empty() ? "." : str("; did you mean '", prefix_, hint, "'?"),
          " Valid keys ", scope, ": ", join(known_, ", "), "."));
    }
  }

 private:
  bool lookup(const std::string& key, YAML::Node* k, YAML::Node* v) const {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      if (it->first.Scalar() == key) {
        *k = it->first;
        *v = it->second;
        return true;
      }
    }
    return false;
  }

  template <class T>
  void parse(const YAML::Node& v, const std::string& path, T& out,
             const Constraint& c) {
    STRATA_CHECK_T(ConfigError, v.IsScalar(), ctx_.where(v), ": ", path,
                   ": expected ", type_name(out), ", got ",
                   v.IsNull() ? "nothing" : v.IsMap() ? "a mapping" : "a list",
                   "; write e.g. '", path.substr(path.rfind('.') + 1), ": ",
                   format_value(out), "'");
    T parsed = out;
    std::string expected = convert(v.Scalar(), parsed);
    STRATA_CHECK_T(ConfigError, expected.empty(), ctx_.where(v), ": ", path,
                   ": expected ", expected, ", got '", v.Scalar(), "'");
    check(v, path, parsed, c);
    out = parsed;
  }

  template <class T>
  void parse(const YAML::Node& v, const std::string& path, std::vector<T>& out,
             const Constraint& c) {
    STRATA_CHECK_T(ConfigError, v.IsSequence(), ctx_.where(v), ": ", path,
                   ": expected a ", type_name(out), " such as ",
                   format_value(out));
    std::vector<T> parsed;
    for (size_t i = 0; i < v.size(); ++i) {
      T x{};
      parse(v[i], str(path, "[", i, "]"), x, c);
      parsed.push_back(x);
    }
    out = parsed;
  }

  void check(const YAML::Node& v, const std::string& path, double x,
             const Constraint& c) {
    STRATA_CHECK_T(ConfigError, c.ok(x), ctx_.where(v), ": ", path, " = ",
                   v.Scalar(), " is out of range; it must be ", c.describe());
  }
  void check(const YAML::Node& v, const std::string& path, int64_t x,
             const Constraint& c) {
    check(v, path, static_cast<double>(x), c);
  }
  void check(const YAML::Node&, const std::string&, bool, const Constraint&) {}
  void check(const YAML::Node& v, const std::string& path,
             const std::string& x, const Constraint& c) {
    if (c.choices.empty()) return;
    for (const auto& choice : c.choices) {
      if (choice == x) return;
    }
    throw ConfigError(str(ctx_.where(v), ": ", path, ": '", x,
                          "' is not allowed;", did_you_mean(x, c.choices),
                          " It must be ", c.describe(), "."));
  }

  YAML::Node node_;
  std::string prefix_;
  ParseContext& ctx_;
  std::vector<std::string> known_;
};

void parse_document(const YAML::Node& root, ParseContext& ctx,
                    Recipe& recipe) {
  if (!root || root.IsNull()) return;  // empty recipe: all defaults
  STRATA_CHECK_T(ConfigError, root.IsMap(), ctx.where(root),
                 ": a recipe must be a mapping of sections (run:, model:, "
                 "data:, ...); see recipes/README.md");
  Parser p(root, "", ctx);
  p.reject_duplicate_keys();
  recipe.visit(p);
  p.reject_unknown_keys();
}

// "optimizer.lr=0.1" -> {optimizer: {lr: 0.1}}, the value typed as YAML.
YAML::Node override_document(const std::string& text) {
  size_t eq = text.find('=');
  STRATA_CHECK_T(UsageError, eq != std::string::npos && eq > 0,
                 "override '", text, "' must look like section.key=value, "
                 "e.g. optimizer.lr=0.1");
  std::vector<std::string> path = split(text.substr(0, eq), '.');
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw ConfigError(str("command-line override '", text,
                          "': the value is not valid YAML: ", e.msg));
  }
  YAML::Node doc = value;
  for (auto it = path.rbegin(); it != path.rend(); ++it) {
    STRATA_CHECK_T(UsageError, !it->empty(), "override '", text,
                   "' has an empty key; use section.key=value");
    YAML::Node parent(YAML::NodeType::Map);
    parent[*it] = doc;
    doc = parent;
  }
  return doc;
}

// ---- Emitter and schema ---------------------------------------------------

class Emitter {
 public:
  explicit Emitter(YAML::Emitter& out) : out_(out) {}
  template <class T>
  void field(const char* key, T& value, const Constraint&, const char*) {
    out_ << YAML::Key << key << YAML::Value;
    emit(value);
  }
  template <class S>
  void section(const char* key, S& sub, const char*) {
    out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
    sub.visit(*this);
    out_ << YAML::EndMap;
  }

 private:
  void emit(const std::string& v) {
    // Quote strings that would otherwise read back as another type.
    bool plain = !v.empty() && v.front() != '-' && v.front() != ' ' &&
                 v.back() != ' ' &&
                 v.find_first_of(":#{}[],&*!|>'\"%@`") == std::string::npos;
    double d;
    bool b;
    if (convert(v, d).empty() || convert(v, b).empty()) plain = false;
    if (plain) {
      out_ << v;
    } else {
      out_ << YAML::DoubleQuoted << v;
    }
  }
  template <class T>
  void emit(const T& v) {
    out_ << format_value(v);
  }
  template <class T>
  void emit(const std::vector<T>& v) {
    out_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& x : v) out_ << format_value(x);
    out_ << YAML::EndSeq;
  }
  YAML::Emitter& out_;
};

class SchemaTable {
 public:
  template <class T>
  void field(const char* key, T& value, const Constraint& c, const char* help) {
    std::string allowed = c.describe();
    std::string def = format_value(value);
    rows_ += str("| `", prefix_, key, "` | ", type_name(value), " | ",
                 def.empty() ? "(empty)" : "`" + def + "`", " | ",
                 allowed.empty() ? "any" : allowed, " | ", cell(help), " |\n");
  }
  template <class S>
  void section(const char* key, S& sub, const char*) {
    std::string saved = prefix_;
    prefix_ += std::string(key) + ".";
    sub.visit(*this);
    prefix_ = saved;
  }
  const std::string& rows() const { return rows_; }

 private:
  // Markdown table cells cannot hold a bare '|'.
  static std::string cell(const std::string& text) {
    std::string out;
    for (char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
    return out;
  }

  std::string prefix_;
  std::string rows_;
};

}  // namespace

std::string Constraint::describe() const {
  if (!choices.empty()) return "one of: " + join(choices, ", ");
  bool has_lo = lo > -std::numeric_limits<double>::infinity();
  bool has_hi = hi < std::numeric_limits<double>::infinity();
  if (has_lo && has_hi) {
    return str("in ", lo_open ? "(" : "[", format_bound(lo), ", ",
               format_bound(hi), "]");
  }
  if (has_lo) return str(lo_open ? "> " : ">= ", format_bound(lo));
  if (has_hi) return str("<= ", format_bound(hi));
  return "";
}

std::string Recipe::where(const std::string& key_path) const {
  auto it = origin.find(key_path);
  return it == origin.end() ? std::string() : it->second + ": ";
}

std::string Recipe::run_dir() const {
  return run.dir.empty() ? "runs/" + run.name : run.dir;
}

Recipe parse_recipe(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides) {
  Recipe recipe;
  ParseContext ctx{source, "", &recipe.origin};
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(str(source, ":", e.mark.line + 1, ": invalid YAML: ",
                          e.msg));
  }
  parse_document(root, ctx, recipe);
  for (const auto& text : overrides) {
    ParseContext octx{source, text, &recipe.origin};
    parse_document(override_document(text), octx, recipe);
  }
  return recipe;
}

Recipe load_recipe(const std::string& path,
                   const std::vector<std::string>& overrides) {
  STRATA_CHECK_T(UsageError, path_exists(path), "recipe '", path,
                 "' does not exist; recipes/ has the shipped ones, e.g. "
                 "recipes/fashion_mnist.yaml");
  return parse_recipe(read_file(path), path, overrides);
}

std::string to_yaml(const Recipe& recipe) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  Emitter e(out);
  Recipe copy = recipe;  // visit() is shared with the parser, so non-const
  copy.visit(e);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string schema_markdown() {
  Recipe defaults;
  SchemaTable t;
  defaults.visit(t);
  return "| key | type | default | allowed | meaning |\n"
         "|---|---|---|---|---|\n" +
         t.rows();
}

}  // namespace strata::train
