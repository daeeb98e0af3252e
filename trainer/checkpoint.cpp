#include "trainer/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/logging.h"
#include "core/strings.h"
#include "distributed/tensor_parallel.h"
#include "trainer/checkpoint_meta.h"
#include "trainer/optim.h"

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

// step_00001200 (a sharded checkpoint directory) -> 1200; -1 otherwise.
int64_t dir_step_of(const std::string& name) {
  long long step = -1;
  int used = 0;
  if (std::sscanf(name.c_str(), "step_%lld%n", &step, &used) == 1 &&
      used == static_cast<int>(name.size())) {
    return step;
  }
  return -1;
}

std::string step_name(int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

at::Tensor scalar(int64_t v) { return at::full({1}, v, at::kLong); }

int64_t read_scalar(torch::serialize::InputArchive& in, const char* key) {
  at::Tensor t;
  in.read(key, t);
  return t.item<int64_t>();
}

torch::serialize::InputArchive open_archive(const std::string& path, c10::Device device) {
  STRATA_CHECK_T(IoError, path_exists(path), "checkpoint '", path,
                 "' does not exist; check train.resume");
  torch::serialize::InputArchive in;
  try {
    in.load_from(path, device);
  } catch (const c10::Error& e) {
    throw IoError(str("cannot read checkpoint '", path, "': ", e.what_without_backtrace()));
  }
  const int64_t format = read_scalar(in, "format");
  STRATA_CHECK_T(IoError, format == kFormatVersion, "checkpoint '", path,
                 "' has format ", format, "; this Strata reads format ", kFormatVersion);
  return in;
}

// Everything but the model: step, data position, loss scale, generator,
// optimizer, extra modules.
void write_train_state(torch::serialize::OutputArchive& out, const TrainState& state,
                       torch::optim::Optimizer* optimizer, torch::nn::Module* extra,
                       torch::nn::Module* qat) {
  out.write("format", scalar(kFormatVersion));
  out.write("step", scalar(state.step));
  out.write("micro_batches", scalar(state.micro_batches));
  out.write("world", scalar(state.world));
  out.write("micro_per_epoch", scalar(state.micro_per_epoch));
  out.write("loss_scale", at::full({1}, state.loss_scale, at::kDouble));
  out.write("loss_scale_growth", scalar(state.loss_scale_growth));
  if (state.window_steps > 0) {
    out.write("window_steps", scalar(state.window_steps));
    out.write("window_loss", at::tensor(state.window_loss, at::kDouble));
  }
  if (!state.online.empty()) out.write("online", at::tensor(state.online, at::kDouble));
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.write("cpu_rng", gen.get_state());
  }
  if (optimizer) {
    torch::serialize::OutputArchive optimizer_archive;
    optimizer->save(optimizer_archive);
    out.write("optimizer", optimizer_archive);
  }
  if (extra) {
    torch::serialize::OutputArchive extra_archive;
    extra->save(extra_archive);
    out.write("extra", extra_archive);
  }
  if (qat) {
    torch::serialize::OutputArchive qat_archive;
    qat->save(qat_archive);
    out.write("qat", qat_archive);
  }
}

TrainState read_counters(torch::serialize::InputArchive& in) {
  TrainState state;
  state.step = read_scalar(in, "step");
  state.micro_batches = read_scalar(in, "micro_batches");
  state.world = read_scalar(in, "world");
  state.micro_per_epoch = read_scalar(in, "micro_per_epoch");
  // Absent in checkpoints from before mixed precision: no scaler state.
  at::Tensor scale, growth;
  if (in.try_read("loss_scale", scale)) state.loss_scale = scale.item<double>();
  if (in.try_read("loss_scale_growth", growth)) state.loss_scale_growth = growth.item<int64_t>();
  // Absent when the checkpoint ended a train record's window.
  at::Tensor steps, losses;
  if (in.try_read("window_steps", steps) && in.try_read("window_loss", losses)) {
    state.window_steps = steps.item<int64_t>();
    const at::Tensor l = losses.to(at::kDouble).contiguous();
    state.window_loss.assign(l.data_ptr<double>(), l.data_ptr<double>() + l.numel());
  }
  at::Tensor online;
  if (in.try_read("online", online)) {
    const at::Tensor o = online.to(at::kDouble).contiguous();
    state.online.assign(o.data_ptr<double>(), o.data_ptr<double>() + o.numel());
  }
  return state;
}

void read_generator(torch::serialize::InputArchive& in) {
  at::Tensor rng;
  in.read("cpu_rng", rng);
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(rng);
}

ConfigError mismatch(const std::string& path, const std::string& what) {
  return ConfigError(str(
      "checkpoint '", path, "' does not match this recipe's model or "
      "optimizer (", what, "); resume with the recipe "
      "that wrote it, or set train.resume=never with a new run.name"));
}

// The inverse of write_train_state after read_counters: optimizer, extra
// modules, QAT observers, generator.
void read_train_state(torch::serialize::InputArchive& in, const std::string& path,
                      torch::optim::Optimizer* optimizer, torch::nn::Module* extra,
                      torch::nn::Module* qat) {
  try {
    if (optimizer) {
      torch::serialize::InputArchive optimizer_archive;
      in.read("optimizer", optimizer_archive);
      optimizer->load(optimizer_archive);
    }
    if (extra) {
      torch::serialize::InputArchive extra_archive;
      in.read("extra", extra_archive);
      extra->load(extra_archive);
    }
    torch::serialize::InputArchive qat_archive;
    if (qat && in.try_read("qat", qat_archive)) {
      qat->load(qat_archive);
    } else if (qat) {
      log_warn("checkpoint '", path, "' holds no QAT observers (written before train.qat was "
               "on); the activation ranges start afresh");
    }
  } catch (const c10::Error& e) {
    throw mismatch(path, e.what_without_backtrace());
  }
  read_generator(in);
}

// Copies `tensors` (name -> value) into the model's parameters and buffers
// of the same names.
void assign(torch::nn::Module& model, const std::map<std::string, at::Tensor>& tensors,
            const std::string& path) {
  torch::NoGradGuard no_grad;
  auto put = [&](const std::string& name, at::Tensor& target) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw mismatch(path, str("no tensor '", name, "'"));
    if (!it->second.sizes().equals(target.sizes())) {
      throw mismatch(path, str("'", name, "' has shape ", it->second.sizes(), ", the model ",
                               target.sizes()));
    }
    target.copy_(it->second);
  };
  for (auto& p : model.named_parameters()) put(p.key(), p.value());
  for (auto& b : model.named_buffers()) put(b.key(), b.value());
}

// The trained tensors by name: the model's parameters and the extra
// modules' (as "distill.hints.<name>"), as the optimizer state is keyed.
std::vector<std::pair<std::string, at::Tensor>> trained_tensors(torch::nn::Module& model,
                                                        torch::nn::Module* extra) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& p : model.named_parameters()) out.emplace_back(p.key(), p.value());
  if (extra) {
    for (auto& p : extra->named_parameters()) out.emplace_back("distill.hints." + p.key(), p.value());
  }
  return out;
}

// The split of a checkpoint entry: a parameter's, or for optimizer state
// "<name>/<field>" its parameter's (0-dim entries, a step count, are whole).
std::optional<dist::TpShard> split_of(const SplitTable& splits, const std::string& entry,
                                      const at::Tensor& value, const std::string& where) {
  if (value.dim() == 0) return std::nullopt;
  const auto s = splits.find(entry.substr(0, entry.find('/')));
  if (s == splits.end()) return std::nullopt;
  STRATA_CHECK_T(IoError, s->second.dim < value.dim(), where, ": ", quote(entry), " is split "
                 "along dimension ", s->second.dim, " but has ", value.dim(), "; the checkpoint "
                 "is corrupt");
  dist::TpShard spec;
  spec.dim = s->second.dim;
  spec.groups = s->second.groups;
  return spec;
}

std::map<std::string, at::Tensor> as_map(std::vector<std::pair<std::string, at::Tensor>> v) {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, t] : v) m.emplace(k, std::move(t));
  return m;
}

}  // namespace

std::string ShardLayout::tag() const { return str("pp", pp_rank, "-tp", tp_rank); }

CheckpointStore::CheckpointStore(std::string dir, int64_t keep, ShardLayout layout)
    : dir_(std::move(dir)), keep_(keep), layout_(layout) {}

namespace {

// A shard's contents; `copy`: taken out of the live tensors (for a write on
// another thread while training changes them), else referring to them.
CheckpointSnapshot shard_of(const TrainState& state, const Trained& t, bool copy_tensors) {
  CheckpointSnapshot snap;
  snap.step = state.step;
  // The optimizer state goes by parameter name (optim-<tag>.pt), so that
  // it can be cut for another layout like the parameters.
  torch::serialize::OutputArchive out;
  write_train_state(out, state, nullptr, t.extra, t.qat);
  out.save_to([&](const void* data, size_t n) {
    snap.train_archive.append(static_cast<const char*>(data), n);
    return n;
  });
  const auto copy = [copy_tensors](const at::Tensor& x) {
    if (!copy_tensors) return x.detach();
    return x.is_cpu() ? x.detach().clone() : x.detach().cpu();
  };
  for (const auto& p : t.model.named_parameters(/*recurse=*/true)) {
    snap.model.emplace_back(p.key(), copy(p.value()));
  }
  for (const auto& b : t.model.named_buffers(/*recurse=*/true)) {
    snap.model.emplace_back(b.key(), copy(b.value()));
  }
  for (auto& [name, value] :
       optimizer_state_dict(t.optimizer, t.optimizer_state, trained_tensors(t.model, t.extra))) {
    snap.optim.emplace_back(name, copy(value));
  }
  JsonObject split_json;
  for (const auto& [name, spec] : t.splits) split_json.add(name, str(spec.dim, "/", spec.groups));
  snap.splits_json = split_json.str() + "\n";
  return snap;
}

}  // namespace

CheckpointSnapshot CheckpointStore::snapshot(const TrainState& state, const Trained& t) const {
  return shard_of(state, t, /*copy_tensors=*/true);
}

std::string CheckpointStore::write(const CheckpointSnapshot& snap) const {
  const std::string dir = join_path(dir_, step_name(snap.step));
  make_dirs(dir);
  const std::string tag = layout_.tag();
  atomic_write_file(join_path(dir, "train-" + tag + ".pt"), snap.train_archive);
  save_state_dict(join_path(dir, "model-" + tag + ".pt"), snap.model);
  save_state_dict(join_path(dir, "optim-" + tag + ".pt"), snap.optim);
  atomic_write_file(join_path(dir, "split-" + tag + ".json"), snap.splits_json);
  return dir;
}

std::string CheckpointStore::save(const TrainState& state, const Trained& t) const {
  return write(shard_of(state, t, /*copy_tensors=*/false));  // written before training goes on
}

std::string CheckpointStore::save_and_publish(const TrainState& state, const Trained& t) const {
  STRATA_INTERNAL_ASSERT(!layout_.sharded(), "save_and_publish with ", layout_.tp, " x ",
                         layout_.pp, " shards");
  const std::string dir = save(state, t);
  publish(state.step);
  return dir;
}

void CheckpointStore::publish(int64_t step) const {
  const std::string dir = join_path(dir_, step_name(step));
  // The manifest (Note [Complete checkpoints]): every shard file, as large
  // as it is now that every rank wrote its own.
  JsonObject files;
  for (const auto& name : list_files(dir)) {
    if (name.empty() || name[0] == '.' || name == "metadata.json") continue;  // temporaries
    files.add(name, static_cast<int64_t>(std::filesystem::file_size(join_path(dir, name))));
  }
  JsonObject meta;
  meta.add("format", kFormatVersion)
      .add("step", step)
      .add("dp", layout_.dp)
      .add("tp", layout_.tp)
      .add("pp", layout_.pp)
      .add("files", files);
  atomic_write_file(join_path(dir, "metadata.json"), meta.str() + "\n");
  prune();
}

void CheckpointStore::prune() const {
  std::vector<std::string> all = list();
  for (size_t i = 0; i + static_cast<size_t>(keep_) < all.size(); ++i) {
    if (is_sharded_checkpoint(all[i])) {
      // metadata.json first: a half-deleted directory reads as incomplete.
      remove_file(join_path(all[i], "metadata.json"));
      std::error_code ec;
      std::filesystem::remove_all(all[i], ec);
    } else {
      remove_file(all[i]);
    }
  }
}

std::vector<std::string> CheckpointStore::list() const {
  std::vector<std::pair<int64_t, std::string>> found;
  for (const auto& name : list_files(dir_)) {
    int64_t step = step_of(name);
    if (step >= 0) found.emplace_back(step, join_path(dir_, name));
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    const int64_t step = dir_step_of(e.path().filename().string());
    if (step >= 0 && is_sharded_checkpoint(e.path().string())) {
      found.emplace_back(step, e.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& f : found) paths.push_back(f.second);
  return paths;
}

std::string CheckpointStore::newest() const {
  std::vector<std::string> all = list();
  // Note [Complete checkpoints]: the newest one whose files are all there
  // at the sizes metadata.json recorded; a later one cut short is skipped
  // (every rank sees the same files, so every rank skips it).
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    const std::string why = incomplete_checkpoint(*it);
    if (why.empty()) return *it;
    log_warn("checkpoint ", *it, " is incomplete (", why, "); trying the one before it");
  }
  return "";
}

// The earlier format: one LibTorch archive with the model and the
// optimizer's own serialisation (so only the optimizer that wrote it reads
// it).
TrainState load_archive_checkpoint(const std::string& path, const Trained& t,
                                   c10::Device device) {
  torch::serialize::InputArchive in = open_archive(path, device);
  TrainState state = read_counters(in);
  try {
    torch::serialize::InputArchive model_archive;
    in.read("model", model_archive);
    t.model.load(model_archive);
  } catch (const c10::Error& e) {
    throw mismatch(path, e.what_without_backtrace());
  }
  read_train_state(in, path, &t.optimizer, t.extra, t.qat);
  log_info("checkpoint ", path, " is of the earlier format (one archive); loaded it, and the "
           "next checkpoint is written in the current one");
  return state;
}

bool is_sharded_checkpoint(const std::string& path) {
  return path_exists(join_path(path, "metadata.json"));
}

std::string incomplete_checkpoint(const std::string& path) {
  if (!is_sharded_checkpoint(path)) return "";  // one archive, written atomically
  const std::string where = join_path(path, "metadata.json");
  CheckpointMeta meta;
  try {
    meta = parse_checkpoint_metadata(read_file(where), where);
  } catch (const IoError& e) {
    return e.what();
  }
  for (const auto& [name, size] : meta.files) {
    const std::string file = join_path(path, name);
    std::error_code ec;
    const auto have = std::filesystem::file_size(file, ec);
    if (ec) return str(name, " is missing");
    if (static_cast<int64_t>(have) != size) {
      return str(name, " has ", have, " bytes where metadata.json recorded ", size);
    }
  }
  return "";
}

ShardLayout sharded_checkpoint_layout(const std::string& dir) {
  STRATA_CHECK_T(IoError, is_sharded_checkpoint(dir), "'", dir,
                 "' is not a complete sharded checkpoint (no metadata.json)");
  const std::string where = join_path(dir, "metadata.json");
  const CheckpointMeta meta = parse_checkpoint_metadata(read_file(where), where);
  STRATA_CHECK_T(IoError, meta.format == kFormatVersion, where, " has format ", meta.format,
                 "; this Strata reads format ", kFormatVersion);
  ShardLayout layout;
  layout.dp = meta.dp;
  layout.tp = meta.tp;
  layout.pp = meta.pp;
  return layout;
}

namespace {

// Every stage's `kind`-<tag>.pt files joined: split entries across the tp
// shards, each name once (a tied copy on a later stage dropped), stage order.
std::vector<std::pair<std::string, at::Tensor>> consolidate(const std::string& dir,
                                                            const std::string& kind) {
  const ShardLayout layout = sharded_checkpoint_layout(dir);
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::set<std::string> seen;
  for (int64_t p = 0; p < layout.pp; ++p) {
    std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards;
    for (int64_t t = 0; t < layout.tp; ++t) {
      const ShardLayout at{layout.dp, layout.tp, layout.pp, t, p};
      shards.push_back(load_state_dict(join_path(dir, kind + "-" + at.tag() + ".pt")));
    }
    const ShardLayout first{layout.dp, layout.tp, layout.pp, 0, p};
    const std::string splits_path = join_path(dir, "split-" + first.tag() + ".json");
    const SplitTable splits = parse_split_table(read_file(splits_path), splits_path);
    for (size_t i = 0; i < shards[0].size(); ++i) {
      const auto& [name, value] = shards[0][i];
      if (!seen.insert(name).second) continue;  // a tied copy
      const auto spec = split_of(splits, name, value, splits_path);
      if (!spec) {
        out.emplace_back(name, value);
        continue;
      }
      std::vector<at::Tensor> parts;
      for (const auto& shard : shards) {
        STRATA_CHECK_T(IoError, i < shard.size() && shard[i].first == name, dir,
                       ": the ", kind, " shards of stage ", p, " disagree on entry ", i, " (",
                       name, ")");
        parts.push_back(shard[i].second);
      }
      out.emplace_back(name, dist::join_shards(parts, *spec));
    }
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> consolidate_checkpoint(const std::string& dir) {
  return consolidate(dir, "model");
}

TrainState load_checkpoint(const std::string& dir, const ShardLayout& layout,
                           const Trained& t, c10::Device device) {
  if (!is_sharded_checkpoint(dir) && !std::filesystem::is_directory(dir)) {
    STRATA_CHECK_T(ConfigError, !layout.sharded(), "checkpoint '", dir, "' is of the earlier "
                   "format (one archive), which resumes only without model parallelism; "
                   "resume it with distributed.tensor_parallel = 1 and "
                   "pipeline_parallel.stages = 1 for one checkpoint, then in any layout");
    return load_archive_checkpoint(dir, t, device);
  }
  torch::nn::Module& model = t.model;
  torch::nn::Module* extra = t.extra;
  const std::map<std::string, dist::TpShard>& splits = t.splits;
  const ShardLayout saved = sharded_checkpoint_layout(dir);
  const bool same = saved.tp == layout.tp && saved.pp == layout.pp;

  STRATA_CHECK_T(ConfigError, same || extra == nullptr, "checkpoint '", dir,
                 "' was written with tp=", saved.tp, " pp=", saved.pp,
                 "; distillation hints resume only in the same layout");
  // Same layout: this rank's own shard. Another: cut from the whole.
  const ShardLayout from = same ? layout : ShardLayout{saved.dp, saved.tp, saved.pp, 0, 0};
  const std::string train_path = join_path(dir, "train-" + from.tag() + ".pt");
  torch::serialize::InputArchive in = open_archive(train_path, device);
  TrainState state = read_counters(in);
  std::map<std::string, at::Tensor> weights, moments;
  if (same) {
    weights = as_map(load_state_dict(join_path(dir, "model-" + layout.tag() + ".pt")));
    moments = as_map(load_state_dict(join_path(dir, "optim-" + layout.tag() + ".pt")));
  } else {
    // A split entry (a parameter, or its "<name>/<field>" state) is cut for
    // this rank as the model splits the parameter.
    auto cut = [&](std::vector<std::pair<std::string, at::Tensor>> all) {
      std::map<std::string, at::Tensor> mine;
      for (auto& [name, value] : all) {
        auto it = splits.find(name.substr(0, name.find('/')));
        mine[name] = it == splits.end() || value.dim() == 0
                         ? value
                         : dist::shard_of(value, it->second,
                                          static_cast<int>(layout.tp_rank),
                                          static_cast<int>(layout.tp));
      }
      return mine;
    };
    weights = cut(consolidate(dir, "model"));
    moments = cut(consolidate(dir, "optim"));
  }
  assign(model, weights, dir);
  try {
    load_optimizer_state_dict(t.optimizer, t.optimizer_state, trained_tensors(model, extra), moments);
  } catch (const ConfigError& e) {
    throw mismatch(dir, e.what());
  }
  read_train_state(in, train_path, nullptr, extra, t.qat);
  if (!same) {
    log_warn("checkpoint ", dir, " was written with tp=", saved.tp, " x pp=", saved.pp,
             "; loaded its weights and optimizer state into tp=", layout.tp, " x pp=",
             layout.pp);
  }
  return state;
}

// Note [Plain state dicts]: torch::pickle_save tags a typed Dict[str,
// Tensor] with torch.jit._pickle.restore_type_tag, a global that
// torch.load(weights_only=True) -- PyTorch's default since 2.6 -- refuses.
// So the dict is pickled without type tags (Pickler's tag_aggregates off):
// a plain dict of tensors rebuilt by torch._utils._rebuild_tensor_v2 (and
// an empty collections.OrderedDict of hooks), the globals weights_only
// allows. The archive is torch.save's zip layout: archive/data.pkl, one
// archive/data/<i> record per storage, archive/version.
void save_state_dict(const std::string& path,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().cpu());
  std::string pickle;
  torch::jit::Pickler pickler([&](const char* data, size_t n) { pickle.append(data, n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr,
                              /*memoized_class_types=*/nullptr, /*get_tensor_id=*/nullptr,
                              /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  std::string archive;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
      archive.append(static_cast<const char*>(data), n);
      return n;
    });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    const std::vector<at::Tensor>& storages = pickler.tensorData();
    for (size_t i = 0; i < storages.size(); ++i) {
      const c10::Storage& st = storages[i].storage();
      writer.writeRecord("data/" + std::to_string(i), st.data(), st.nbytes());
    }
    writer.writeEndOfFile();
  }
  atomic_write_file(path, archive);
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

void assign_state_dict(torch::nn::Module& model,
                       const std::vector<std::pair<std::string, at::Tensor>>& saved,
                       const std::string& source, const std::string& fix) {
  const std::map<std::string, at::Tensor> by_name(saved.begin(), saved.end());
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  auto fill = [&](const std::string& name, at::Tensor& dst) {
    const auto it = by_name.find(name);
    STRATA_CHECK_T(ConfigError, it != by_name.end(), source, " has no tensor '", name,
                   "' that the model needs; ", fix);
    STRATA_CHECK_T(ConfigError, it->second.sizes() == dst.sizes(), source, ": '", name,
                   "' has shape ", it->second.sizes(), " but the model's is ", dst.sizes(), "; ",
                   fix);
    dst.copy_(it->second);
    used.insert(name);
  };
  for (auto& p : model.named_parameters()) fill(p.key(), p.value());
  for (auto& b : model.named_buffers()) fill(b.key(), b.value());
  for (const auto& [name, t] : saved) {
    STRATA_CHECK_T(ConfigError, used.count(name) == 1, source, " holds '", name,
                   "', which the model does not have; ", fix);
  }
}

void load_init_weights(torch::nn::Module& model, const Recipe& recipe) {
  const std::string where = recipe.where("train.init");
  const std::string& path = recipe.train.init;
  STRATA_CHECK_T(ConfigError, path_exists(path), where, "train.init = '", path,
                 "' does not exist; point it at the model.pt of a finished run (runs/<name>/model.pt)");
  assign_state_dict(model, load_state_dict(path), str(where, "train.init '", path, "'"),
                    str("point train.init at a model.pt of the same model (model.name is ",
                        recipe.model.name, ", with this recipe's model settings)"));
}

}  // namespace strata::train
