#include "trainer/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"

namespace strata::train {
namespace {

// The reflected Castagnoli polynomial's byte table.
std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Note [Event encoding]: the few protobuf fields an event file needs,
// encoded here rather than generated, so the trainer core needs no
// protobuf (the GPU machines' LibTorch builds have no protoc). Field
// numbers from tensorflow/core/util/event.proto and
// framework/summary.proto:
//   Event   { double wall_time = 1; int64 step = 2;
//             string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// TensorBoard's own reader checks the result in a test.
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void key(std::string& out, int field, int wire_type) {
  varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}
void bytes_field(std::string& out, int field, const std::string& bytes) {
  key(out, field, 2);
  varint(out, bytes.size());
  out += bytes;
}
void double_field(std::string& out, int field, double v) {
  key(out, field, 1);
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_le(out, bits, 8);
}
void float_field(std::string& out, int field, float v) {
  key(out, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_le(out, bits, 4);
}
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  double_field(e, 1, wall_time);
  if (step != 0) {
    key(e, 2, 0);
    varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = make_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  make_dirs(dir);
  char host[256] = "host";
  ::gethostname(host, sizeof(host) - 1);
  host[sizeof(host) - 1] = '\0';
  path_ = join_path(dir, str("events.out.tfevents.", static_cast<int64_t>(now_s()), ".", host,
                             ".", ::getpid(), ".strata"));
  file_ = std::fopen(path_.c_str(), "wb");
  STRATA_CHECK_T(IoError, file_ != nullptr, "cannot create the TensorBoard event file '", path_,
                 "'; check the run directory's permissions");
  std::string first = event_header(now_s(), 0);
  bytes_field(first, 3, "brain.Event:2");
  record(first);
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void TensorBoardWriter::scalars(int64_t step, double wall_time,
                                const std::vector<std::pair<std::string, double>>& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    bytes_field(value, 1, tag);
    float_field(value, 2, static_cast<float>(v));
    bytes_field(summary, 1, value);
  }
  std::string e = event_header(wall_time, step);
  bytes_field(e, 5, summary);
  record(e);
}

void TensorBoardWriter::record(const std::string& bytes) {
  std::string header;
  put_le(header, bytes.size(), 8);
  std::string out = header;
  put_le(out, masked_crc32c(header.data(), header.size()), 4);
  out += bytes;
  put_le(out, masked_crc32c(bytes.data(), bytes.size()), 4);
  STRATA_CHECK_T(IoError,
                 std::fwrite(out.data(), 1, out.size(), file_) == out.size() &&
                     std::fflush(file_) == 0,
                 "writing ", path_, " failed (disk full?)");
}

}  // namespace strata::train
