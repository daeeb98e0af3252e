// Filesystem helpers with crash-safety guarantees.
//
// Note [Atomic files]: every file another process or a resumed run may read
// (checkpoints, model.pt, recipe.yaml) is written to a temporary name in the
// same directory, fsync'ed, renamed over the final name, and the directory is
// fsync'ed. A reader (or a run killed with SIGKILL at any instant) sees either
// the old complete file or the new complete file, never a torn one.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace strata {

// mkdir -p. Throws IoError naming the path and errno text.
void make_dirs(const std::string& path);
bool path_exists(const std::string& path);
std::string parent_dir(const std::string& path);
std::string join_path(const std::string& a, const std::string& b);

// Regular files directly inside `dir` (names only, sorted).
std::vector<std::string> list_files(const std::string& dir);

std::string read_file(const std::string& path);

// Writes `bytes` to `path` atomically (Note [Atomic files]).
void atomic_write_file(const std::string& path, const std::string& bytes);

// Atomically publishes a file produced by `write_to(tmp_path)`: the callback
// writes a temporary file, which is then fsync'ed and renamed to `path`.
void atomic_publish(const std::string& path,
                    const std::function<void(const std::string&)>& write_to);

void remove_file(const std::string& path);

}  // namespace strata
