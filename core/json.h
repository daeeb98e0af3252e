// JSON for metrics.jsonl lines, checkpoint metadata and their readers,
// through nlohmann/json (Debian nlohmann-json3-dev): written with keys in
// the order they were added, read as real JSON (whitespace, escapes,
// nesting), never by searching for substrings.
//
//   JsonObject().add("kind", "train").add("step", 10).add("loss", 0.5).str()
//   -> {"kind":"train","step":10,"loss":0.5}
//
// Non-finite doubles are written as null (JSON has no NaN). Doubles are
// written in the shortest form that reads back to the same value.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace strata {

class JsonObject {
 public:
  JsonObject();
  ~JsonObject();
  JsonObject(const JsonObject& other);
  JsonObject& operator=(const JsonObject& other);
  JsonObject(JsonObject&&) noexcept;
  JsonObject& operator=(JsonObject&&) noexcept;

  JsonObject& add(const std::string& key, const std::string& value);
  JsonObject& add(const std::string& key, const char* value);
  JsonObject& add(const std::string& key, double value);
  JsonObject& add(const std::string& key, int64_t value);
  JsonObject& add(const std::string& key, int value) {
    return add(key, static_cast<int64_t>(value));
  }
  JsonObject& add(const std::string& key, bool value);
  JsonObject& add(const std::string& key, const JsonObject& value);  // nested
  JsonObject& add(const std::string& key, const std::vector<double>& values);  // an array
  // One line (no newline); text is escaped as JSON requires, invalid
  // UTF-8 replaced rather than refused.
  std::string str() const;
  // The record itself, for writers of other formats (TensorBoard).
  const nlohmann::ordered_json& json() const { return *j_; }

 private:
  std::unique_ptr<nlohmann::ordered_json> j_;
};

// `text` parsed as one JSON object; IoError naming `where` (a file, a line)
// when it is not JSON or not an object.
nlohmann::json parse_json_object(const std::string& text, const std::string& where);

}  // namespace strata
