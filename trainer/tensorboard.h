// TensorBoard event files (metrics.tensorboard: true): the scalars of
// metrics.jsonl, written by the same rank, into the run directory so that
// `tensorboard --logdir runs/` shows one run per run directory.
//
// Format (what TensorBoard's reader expects): a file
// events.out.tfevents.<seconds>.<host>.<pid>.strata of records, each
//   uint64 length, uint32 masked_crc32c(length), length bytes of a
//   serialized Event, uint32 masked_crc32c(bytes)
// (little-endian; masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8
// with c the CRC-32C of x). The first Event holds file_version
// "brain.Event:2"; every other one a Summary of scalar values at a step.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace strata::train {

// CRC-32C (Castagnoli), and TensorBoard's masking of it.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

class TensorBoardWriter {
 public:
  // Opens a new event file in `dir` (created if missing); IoError when it
  // cannot.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event: the scalars `values` (tag, value) at `step`; flushed.
  void scalars(int64_t step, double wall_time,
               const std::vector<std::pair<std::string, double>>& values);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& bytes);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace strata::train
