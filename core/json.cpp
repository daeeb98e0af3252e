#include "core/json.h"

#include <cmath>
#include <cstdio>

#include "core/strings.h"

namespace strata {

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

void JsonObject::key(const std::string& k) {
  if (body_.size() > 1) body_ += ",";
  body_ += json_quote(k) + ":";
}

JsonObject& JsonObject::add(const std::string& k, const std::string& v) {
  key(k);
  body_ += json_quote(v);
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const char* v) {
  return add(k, std::string(v));
}

JsonObject& JsonObject::add(const std::string& k, double v) {
  key(k);
  body_ += std::isfinite(v) ? format_double(v) : "null";
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, int64_t v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, bool v) {
  key(k);
  body_ += v ? "true" : "false";
  return *this;
}

bool json_field(const std::string& line, const std::string& key,
                std::string* raw_value) {
  std::string needle = json_quote(key) + ":";
  size_t pos = line.find(needle);
  if (pos == std::string::npos) return false;
  pos += needle.size();
  size_t end = pos;
  if (end < line.size() && line[end] == '"') {
    end = line.find('"', end + 1);
    if (end == std::string::npos) return false;
    *raw_value = line.substr(pos + 1, end - pos - 1);
    return true;
  }
  while (end < line.size() && line[end] != ',' && line[end] != '}') ++end;
  *raw_value = line.substr(pos, end - pos);
  return true;
}

}  // namespace strata
