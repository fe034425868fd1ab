// Safetensors files read and written one tensor at a time, for checkpoints larger than memory's
// comfort (Hugging Face imports and exports): the reader maps only the pages of the tensor asked
// for and unmaps them before returning; the writer fixes the header first and then appends each
// tensor's data as it is produced. Tensors travel as fp32 in memory; on disk F32, BF16 or F16
// (read) and F32 or BF16 (written).
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace pcmoe {

struct StEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range in the data section
};

std::string st_shape_str(const std::vector<int64_t>& shape);

class StReader {
 public:
  // Reads and checks the header (every dtype known, every byte range inside the file and of its
  // shape's size); no tensor data is read.
  explicit StReader(const std::string& path);
  ~StReader();
  StReader(const StReader&) = delete;
  StReader& operator=(const StReader&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, StEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // Throws naming the file and tensor if it is absent, of another shape, or of a dtype this
  // reader does not convert.
  const StEntry& check(const std::string& name, const std::vector<int64_t>& shape) const;
  // check(), then converts the tensor into out[numel]; refuses NaN and inf.
  void read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out);
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::map<std::string, StEntry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t bytes_read_ = 0;
};

// One tensor's place in a file being written.
struct StPlanned {
  std::string name;
  std::string dtype;  // "F32" or "BF16"
  std::vector<int64_t> shape;
};

class StWriter {
 public:
  // Writes the header to path + ".tmp"; tensors must then come in `plan`'s order.
  StWriter(const std::string& path, const std::vector<StPlanned>& plan,
           const std::map<std::string, std::string>& metadata);
  ~StWriter();  // an unfinished file is removed
  StWriter(const StWriter&) = delete;
  StWriter& operator=(const StWriter&) = delete;
  void write_next(const std::string& name, const float* values);
  // After the last tensor: flushes and renames the file into place.
  void finish();

 private:
  std::string path_, tmp_;
  std::vector<StPlanned> plan_;
  size_t next_ = 0;
  std::FILE* out_ = nullptr;
};

// Bytes a tensor of this dtype and shape takes on disk (F32, BF16, F16).
uint64_t st_bytes(const std::string& dtype, const std::vector<int64_t>& shape);

}  // namespace pcmoe
