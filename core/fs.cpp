#include "core/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace strata {
namespace {

std::string errno_text() { return std::strerror(errno); }

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY)
                                          : O_RDONLY);
  STRATA_CHECK_T(IoError, fd >= 0, "cannot open '", path,
                 "' to sync it: ", errno_text());
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  STRATA_CHECK_T(IoError, rc == 0, "fsync('", path,
                 "') failed: ", std::strerror(saved));
}

}  // namespace

void make_dirs(const std::string& path) {
  if (path.empty() || path_exists(path)) return;
  std::string parent = parent_dir(path);
  if (!parent.empty() && parent != path) make_dirs(parent);
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    throw IoError(str("cannot create directory '", path, "': ", errno_text(),
                      "; check the path and its permissions"));
  }
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string parent_dir(const std::string& path) {
  size_t pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

std::vector<std::string> list_files(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (::stat(join_path(dir, name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      names.push_back(name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  STRATA_CHECK_T(IoError, in.good(), "cannot read '", path, "': ",
                 errno_text());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void atomic_publish(const std::string& path,
                    const std::function<void(const std::string&)>& write_to) {
  std::string dir = parent_dir(path);
  make_dirs(dir);
  std::string base = path.substr(path.find_last_of('/') + 1);
  std::string tmp = join_path(dir, "." + base + ".tmp." +
                                       std::to_string(::getpid()));
  try {
    write_to(tmp);
    fsync_path(tmp, /*directory=*/false);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw IoError(str("cannot rename '", tmp, "' to '", path, "': ", why));
  }
  fsync_path(dir, /*directory=*/true);
}

void atomic_write_file(const std::string& path, const std::string& bytes) {
  atomic_publish(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    STRATA_CHECK_T(IoError, out.good(), "cannot write '", tmp, "': ",
                   errno_text());
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    STRATA_CHECK_T(IoError, !out.fail(), "writing '", tmp,
                   "' failed (disk full?): ", errno_text());
  });
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw IoError(str("cannot remove '", path, "': ", errno_text()));
  }
}

}  // namespace strata
