#include "trainer/data/tokens.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/strings.h"

namespace strata::train {
namespace {

class ByteTokens final : public Tokens {
 public:
  explicit ByteTokens(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  int64_t size() const override { return static_cast<int64_t>(bytes_.size()); }
  void copy(int64_t start, int64_t n, int64_t* out) const override {
    std::copy_n(bytes_.data() + start, n, out);
  }

 private:
  std::vector<uint8_t> bytes_;
};

// uint16 ids in a read-only private mapping, unmapped with the object.
class MappedTokens final : public Tokens {
 public:
  MappedTokens(void* map, size_t map_bytes, const uint16_t* ids, int64_t n)
      : map_(map), map_bytes_(map_bytes), ids_(ids), n_(n) {}
  ~MappedTokens() override { ::munmap(map_, map_bytes_); }
  MappedTokens(const MappedTokens&) = delete;
  MappedTokens& operator=(const MappedTokens&) = delete;
  int64_t size() const override { return n_; }
  void copy(int64_t start, int64_t n, int64_t* out) const override {
    std::copy_n(ids_ + start, n, out);  // little-endian hosts (x86, arm64)
  }

 private:
  void* map_;
  size_t map_bytes_;
  const uint16_t* ids_;
  int64_t n_;
};

class TokenRange final : public Tokens {
 public:
  TokenRange(std::shared_ptr<const Tokens> base, int64_t begin, int64_t end)
      : base_(std::move(base)), begin_(begin), n_(end - begin) {}
  int64_t size() const override { return n_; }
  void copy(int64_t start, int64_t n, int64_t* out) const override {
    base_->copy(begin_ + start, n, out);
  }

 private:
  std::shared_ptr<const Tokens> base_;
  int64_t begin_, n_;
};

}  // namespace

int64_t Tokens::vocabulary() const {
  int64_t top = -1;
  std::vector<int64_t> chunk(1 << 16);
  for (int64_t at = 0; at < size(); at += static_cast<int64_t>(chunk.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(chunk.size()), size() - at);
    copy(at, n, chunk.data());
    top = std::max(top, *std::max_element(chunk.begin(), chunk.begin() + n));
  }
  return top + 1;
}

std::shared_ptr<const Tokens> byte_tokens(std::vector<uint8_t> bytes) {
  return std::make_shared<ByteTokens>(std::move(bytes));
}

std::shared_ptr<const Tokens> token_range(std::shared_ptr<const Tokens> base, int64_t begin,
                                          int64_t end) {
  STRATA_INTERNAL_ASSERT(0 <= begin && begin <= end && end <= base->size());
  return std::make_shared<TokenRange>(std::move(base), begin, end);
}

std::shared_ptr<const Tokens> map_token_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STRATA_CHECK_T(IoError, fd >= 0, "cannot open token file '", path, "': ",
                 std::strerror(errno), "; data.tokens names a directory holding train.bin "
                 "and val.bin (uint16 token ids, as nanoGPT's prepare.py or llm.c write)");
  struct stat st {};
  const bool statted = ::fstat(fd, &st) == 0;
  const int64_t bytes = statted ? static_cast<int64_t>(st.st_size) : -1;
  if (!statted || bytes < 2 || bytes % 2 != 0) {
    ::close(fd);
    throw IoError(str("token file '", path, "' has ", bytes, " bytes: not a whole, non-empty "
                      "number of uint16 token ids"));
  }
  void* map = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  STRATA_CHECK_T(IoError, map != MAP_FAILED, "cannot map token file '", path, "': ",
                 std::strerror(errno));
  const auto* words = static_cast<const int32_t*>(map);
  const uint16_t* ids = static_cast<const uint16_t*>(map);
  int64_t n = bytes / 2;
  if (bytes >= kLlmcHeaderInts * 4 && words[0] == kLlmcMagic) {
    const int32_t version = words[1];
    const int64_t count = words[2];
    const int64_t expect = (bytes - kLlmcHeaderInts * 4) / 2;
    if (version != 1 || count != expect) {
      ::munmap(map, static_cast<size_t>(bytes));  // words and ids are gone from here on
      throw IoError(str("token file '", path, "' has llm.c's header (magic ", kLlmcMagic,
                        ") but version ", version, " and ", count, " tokens where the file "
                        "holds ", expect, "; the file is truncated or of another version"));
    }
    ids += kLlmcHeaderInts * 2;
    n = count;
  }
  return std::make_shared<MappedTokens>(map, static_cast<size_t>(bytes), ids, n);
}

}  // namespace strata::train
