#include "core/error.h"

namespace strata {

int exit_code(const std::exception& e) {
  if (dynamic_cast<const UsageError*>(&e) != nullptr ||
      dynamic_cast<const ConfigError*>(&e) != nullptr) {
    return 2;
  }
  return 1;
}

}  // namespace strata
