// The safetensors file format (an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw data). F32 and I32 only.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace pcmoe {

struct StTensor {
  std::string dtype;  // "F32" or "I32"
  std::vector<int64_t> shape;
  std::vector<std::byte> data;  // little-endian, numel * 4 bytes
  int64_t numel() const;
  const float* f32() const;
  const int32_t* i32() const;
};

struct StFile {
  std::map<std::string, StTensor> tensors;
  std::map<std::string, std::string> metadata;
  void put_f32(const std::string& name, std::vector<int64_t> shape, const float* values);
  void put_i32(const std::string& name, std::vector<int64_t> shape, const int32_t* values);
  // Throws std::runtime_error naming the file and tensor if it is absent or of another shape.
  const StTensor& get(const std::string& name, const std::vector<int64_t>& shape,
                      const std::string& dtype = "F32") const;
};

// Throws std::runtime_error with the path and the reason (truncated, malformed header, ...).
StFile read_safetensors(const std::string& path);
// Writes to path + ".tmp", then renames: a crash never leaves a half-written file at `path`.
void write_safetensors(const std::string& path, const StFile& file);

// The two checks every reader of the format makes (this one and the streaming one,
// tensor/st_stream.h), throwing as read_safetensors does: the header length from the file's first
// 8 bytes (file_size >= 8), which must fit in the file, and the header, which must be a JSON object.
uint64_t safetensors_header_length(const unsigned char* len_bytes, uint64_t file_size, const std::string& path);
nlohmann::json parse_safetensors_header(const std::string& header, const std::string& path);

}  // namespace pcmoe
