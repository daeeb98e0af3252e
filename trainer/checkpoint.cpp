#include "trainer/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"

namespace strata::train {
namespace {

constexpr int64_t kFormatVersion = 1;

// step_00001200.pt -> 1200; -1 for anything else (temporaries included).
int64_t step_of(const std::string& name) {
  long long step = -1;
  char tail = 0;
  if (std::sscanf(name.c_str(), "step_%lld.p%c", &step, &tail) == 2 &&
      tail == 't' && name.size() > 3 &&
      name.compare(name.size() - 3, 3, ".pt") == 0) {
    return step;
  }
  return -1;
}

at::Tensor scalar(int64_t v) { return at::full({1}, v, at::kLong); }

int64_t read_scalar(torch::serialize::InputArchive& in, const char* key) {
  at::Tensor t;
  in.read(key, t);
  return t.item<int64_t>();
}

}  // namespace

CheckpointStore::CheckpointStore(std::string dir, int64_t keep)
    : dir_(std::move(dir)), keep_(keep) {}

std::string CheckpointStore::save(const TrainState& state,
                                  torch::nn::Module& model,
                                  torch::optim::Optimizer& optimizer,
                                  torch::nn::Module* extra) const {
  torch::serialize::OutputArchive out;
  out.write("format", scalar(kFormatVersion));
  out.write("step", scalar(state.step));
  out.write("micro_batches", scalar(state.micro_batches));
  out.write("world", scalar(state.world));
  out.write("micro_per_epoch", scalar(state.micro_per_epoch));
  out.write("loss_scale", at::full({1}, state.loss_scale, at::kDouble));
  out.write("loss_scale_growth", scalar(state.loss_scale_growth));
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.write("cpu_rng", gen.get_state());
  }
  torch::serialize::OutputArchive model_archive;
  model.save(model_archive);
  out.write("model", model_archive);
  torch::serialize::OutputArchive optimizer_archive;
  optimizer.save(optimizer_archive);
  out.write("optimizer", optimizer_archive);
  if (extra) {
    torch::serialize::OutputArchive extra_archive;
    extra->save(extra_archive);
    out.write("extra", extra_archive);
  }

  char name[64];
  std::snprintf(name, sizeof(name), "step_%08lld.pt",
                static_cast<long long>(state.step));
  const std::string path = join_path(dir_, name);
  atomic_publish(path, [&](const std::string& tmp) { out.save_to(tmp); });

  std::vector<std::string> all = list();
  for (size_t i = 0; i + static_cast<size_t>(keep_) < all.size(); ++i) {
    remove_file(all[i]);
  }
  return path;
}

std::vector<std::string> CheckpointStore::list() const {
  std::vector<std::pair<int64_t, std::string>> found;
  for (const auto& name : list_files(dir_)) {
    int64_t step = step_of(name);
    if (step >= 0) found.emplace_back(step, join_path(dir_, name));
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& f : found) paths.push_back(f.second);
  return paths;
}

std::string CheckpointStore::newest() const {
  std::vector<std::string> all = list();
  return all.empty() ? std::string() : all.back();
}

TrainState load_checkpoint(const std::string& path, torch::nn::Module& model,
                           torch::optim::Optimizer& optimizer, c10::Device device,
                           torch::nn::Module* extra) {
  STRATA_CHECK_T(IoError, path_exists(path), "checkpoint '", path,
                 "' does not exist; check train.resume");
  torch::serialize::InputArchive in;
  try {
    in.load_from(path, device);
  } catch (const c10::Error& e) {
    throw IoError(str("cannot read checkpoint '", path, "': ",
                      e.what_without_backtrace()));
  }
  const int64_t format = read_scalar(in, "format");
  STRATA_CHECK_T(IoError, format == kFormatVersion, "checkpoint '", path,
                 "' has format ", format, "; this Strata reads format ",
                 kFormatVersion);
  TrainState state;
  state.step = read_scalar(in, "step");
  state.micro_batches = read_scalar(in, "micro_batches");
  state.world = read_scalar(in, "world");
  state.micro_per_epoch = read_scalar(in, "micro_per_epoch");
  // Absent in checkpoints from before mixed precision: no scaler state.
  at::Tensor scale, growth;
  if (in.try_read("loss_scale", scale)) state.loss_scale = scale.item<double>();
  if (in.try_read("loss_scale_growth", growth)) state.loss_scale_growth = growth.item<int64_t>();
  try {
    torch::serialize::InputArchive model_archive;
    in.read("model", model_archive);
    model.load(model_archive);
    torch::serialize::InputArchive optimizer_archive;
    in.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
    if (extra) {
      torch::serialize::InputArchive extra_archive;
      in.read("extra", extra_archive);
      extra->load(extra_archive);
    }
  } catch (const c10::Error& e) {
    throw ConfigError(str(
        "checkpoint '", path, "' does not match this recipe's model or "
        "optimizer (", e.what_without_backtrace(), "); resume with the recipe "
        "that wrote it, or set train.resume=never with a new run.name"));
  }
  at::Tensor rng;
  in.read("cpu_rng", rng);
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(rng);
  return state;
}

void save_state_dict(const std::string& path,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().cpu());
  std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  atomic_write_file(path, std::string(bytes.begin(), bytes.end()));
}

void save_state_dict(const std::string& path, const torch::nn::Module& model) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) tensors.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers(/*recurse=*/true)) tensors.emplace_back(b.key(), b.value());
  save_state_dict(path, tensors);
}

std::vector<std::pair<std::string, at::Tensor>> load_state_dict(const std::string& path) {
  STRATA_CHECK_T(IoError, path_exists(path), "state dict '", path, "' does not exist");
  const std::string bytes = read_file(path);
  c10::IValue v;
  try {
    v = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  } catch (const std::exception& e) {
    throw IoError(str(path, ": not a readable state dict (", e.what(), ")"));
  }
  STRATA_CHECK_T(IoError, v.isGenericDict(), path, ": not a state dict");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& kv : v.toGenericDict()) {
    out.emplace_back(kv.key().toStringRef(), kv.value().toTensor());
  }
  return out;
}

}  // namespace strata::train
