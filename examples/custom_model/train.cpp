// strata-train with this project's model, dataset and optimizer registered.
#include "parts.h"
#include "trainer/train_main.h"

int main(int argc, char** argv) {
  strata::train::Registries registries = strata::train::builtin_registries();
  custom::register_parts(registries);
  return strata::train::train_main("custom-train", argc, argv, registries);
}
