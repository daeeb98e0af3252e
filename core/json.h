// A minimal JSON object builder for metrics.jsonl lines.
//
//   JsonObject().add("kind", "train").add("step", 10).add("loss", 0.5).str()
//   -> {"kind":"train","step":10,"loss":0.5}
//
// Non-finite doubles are written as null (JSON has no NaN).
#pragma once

#include <cstdint>
#include <string>

namespace strata {

class JsonObject {
 public:
  JsonObject& add(const std::string& key, const std::string& value);
  JsonObject& add(const std::string& key, const char* value);
  JsonObject& add(const std::string& key, double value);
  JsonObject& add(const std::string& key, int64_t value);
  JsonObject& add(const std::string& key, int value) {
    return add(key, static_cast<int64_t>(value));
  }
  JsonObject& add(const std::string& key, bool value);
  std::string str() const { return body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_ = "{";
};

std::string json_quote(const std::string& s);

// Reads one numeric or string field of a flat JSON object line written by
// JsonObject (for resume and tests; not a general JSON parser). Returns false
// when the key is absent.
bool json_field(const std::string& line, const std::string& key,
                std::string* raw_value);

}  // namespace strata
