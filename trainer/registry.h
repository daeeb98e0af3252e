// A named set of factories (models, optimizers, schedules).
//
// Registries are plain values filled by explicit register_builtin_*() calls in
// main() (no static initialisers); users add their own entries before handing
// the registries to the Trainer.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace strata::train {

template <class Factory>
class Registry {
 public:
  // `kind` names the registry in messages ("model", "optimizer").
  explicit Registry(std::string kind) : kind_(std::move(kind)) {}

  void add(const std::string& name, Factory factory) {
    STRATA_INTERNAL_ASSERT(find(name) == nullptr, kind_, " '", name,
                           "' registered twice");
    entries_.emplace_back(name, std::move(factory));
  }

  // `where` is the recipe location prefix ("recipes/a.yaml:4: ") and `key`
  // the key path, for the error message when `name` is unknown.
  const Factory& get(const std::string& name, const std::string& where,
                     const std::string& key) const {
    const Factory* f = find(name);
    STRATA_CHECK_T(ConfigError, f != nullptr, where, key, ": unknown ", kind_,
                   " '", name, "';", did_you_mean(name, names()),
                   " Registered: ", join(names(), ", "), ".");
    return *f;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : entries_) out.push_back(e.first);
    return out;
  }

  // The entry called `name`, or null.
  const Factory* find(const std::string& name) const {
    for (const auto& e : entries_) {
      if (e.first == name) return &e.second;
    }
    return nullptr;
  }

 private:
  std::string kind_;
  std::vector<std::pair<std::string, Factory>> entries_;
};

}  // namespace strata::train
