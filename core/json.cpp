#include "core/json.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "core/error.h"
#include "core/strings.h"

namespace strata {

JsonObject::JsonObject() : j_(std::make_unique<nlohmann::ordered_json>(nlohmann::ordered_json::object())) {}
JsonObject::~JsonObject() = default;
JsonObject::JsonObject(const JsonObject& other)
    : j_(std::make_unique<nlohmann::ordered_json>(*other.j_)) {}
JsonObject& JsonObject::operator=(const JsonObject& other) {
  if (this != &other) *j_ = *other.j_;
  return *this;
}
JsonObject::JsonObject(JsonObject&&) noexcept = default;
JsonObject& JsonObject::operator=(JsonObject&&) noexcept = default;

JsonObject& JsonObject::add(const std::string& k, const std::string& v) {
  (*j_)[k] = v;
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const char* v) {
  return add(k, std::string(v));
}

JsonObject& JsonObject::add(const std::string& k, double v) {
  if (std::isfinite(v)) {
    (*j_)[k] = v;
  } else {
    (*j_)[k] = nullptr;
  }
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, int64_t v) {
  (*j_)[k] = v;
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, bool v) {
  (*j_)[k] = v;
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const std::vector<double>& v) {
  nlohmann::ordered_json a = nlohmann::ordered_json::array();
  for (double x : v) a.push_back(std::isfinite(x) ? nlohmann::ordered_json(x) : nullptr);
  (*j_)[k] = std::move(a);
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const JsonObject& v) {
  (*j_)[k] = *v.j_;
  return *this;
}

std::string JsonObject::str() const {
  return j_->dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

nlohmann::json parse_json_object(const std::string& text, const std::string& where) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  STRATA_CHECK_T(IoError, !j.is_discarded(), where, ": not valid JSON (",
                 printable(text, 60), ")");
  STRATA_CHECK_T(IoError, j.is_object(), where, ": not a JSON object (", printable(text, 60), ")");
  return j;
}

}  // namespace strata
