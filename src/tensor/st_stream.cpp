#include "tensor/st_stream.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tensor/dtype.h"
#include "tensor/safetensors.h"

namespace pcmoe {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error("safetensors file '" + path + "': " + why);
}

// Element sizes of every dtype the safetensors format defines; only the float ones convert.
int element_bytes(const std::string& dtype) {
  static const std::map<std::string, int> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I64", 8},
      {"U64", 8}, {"I32", 4}, {"U32", 4}, {"I16", 2}, {"U16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

bool converts(const std::string& dtype) { return dtype == "F32" || dtype == "BF16" || dtype == "F16"; }

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

std::string st_shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t st_bytes(const std::string& dtype, const std::vector<int64_t>& shape) {
  return (uint64_t)numel_of(shape) * (uint64_t)element_bytes(dtype);
}

StReader::StReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd_, &st) != 0) fail(path, "cannot stat");
  const uint64_t file_size = (uint64_t)st.st_size;
  unsigned char len_bytes[8];
  if (file_size < 8 || pread(fd_, len_bytes, 8, 0) != 8) fail(path, "truncated (no header length)");
  const uint64_t header_len = safetensors_header_length(len_bytes, file_size, path);
  std::string header(header_len, '\0');
  if (header_len && pread(fd_, header.data(), header_len, 8) != (ssize_t)header_len) fail(path, "cannot read the header");
  data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - data_start_;
  const nlohmann::json j = parse_safetensors_header(header, path);
  for (auto& [name, entry] : j.items()) {
    try {
      if (name == "__metadata__") {
        for (auto& [k, v] : entry.items()) metadata_[k] = v.get<std::string>();
        continue;
      }
      StEntry e;
      e.dtype = entry.at("dtype").get<std::string>();
      if (!element_bytes(e.dtype)) fail(path, "tensor '" + name + "' has dtype '" + e.dtype + "', which the reader does not know");
      e.shape = entry.at("shape").get<std::vector<int64_t>>();
      for (int64_t d : e.shape)
        if (d < 0 || d > (int64_t)1 << 40) fail(path, "tensor '" + name + "' has a dimension out of range");
      const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
        fail(path, "tensor '" + name + "' has data offsets outside the file (truncated?)");
      if (offsets[1] - offsets[0] != st_bytes(e.dtype, e.shape))
        fail(path, "tensor '" + name + "' byte range does not match its shape");
      e.begin = offsets[0];
      e.end = offsets[1];
      entries_[name] = std::move(e);
    } catch (const nlohmann::json::exception& e) {
      fail(path, "malformed entry '" + name + "': " + e.what());
    }
  }
}

StReader::~StReader() {
  if (fd_ >= 0) ::close(fd_);
}

const StEntry& StReader::check(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, "tensor '" + name + "' is missing");
  const StEntry& e = it->second;
  if (e.shape != shape)
    fail(path_, "tensor '" + name + "' is " + st_shape_str(e.shape) + ", expected " + st_shape_str(shape));
  if (!converts(e.dtype))
    fail(path_, "tensor '" + name + "' has dtype " + e.dtype + ", which the reader does not convert (F32, BF16, F16)");
  return e;
}

void StReader::read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out) {
  const StEntry& e = check(name, shape);
  const int64_t n = numel_of(shape);
  if (n == 0) return;
  // Map just this tensor's pages (from the page its data starts in) and drop them afterwards,
  // so reading a whole checkpoint never holds more than one tensor of it.
  const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  const uint64_t start = data_start_ + e.begin, map_start = start / page * page;
  const size_t map_len = (size_t)(data_start_ + e.end - map_start);
  void* map = mmap(nullptr, map_len, PROT_READ, MAP_PRIVATE, fd_, (off_t)map_start);
  if (map == MAP_FAILED) fail(path_, "cannot map tensor '" + name + "': " + std::strerror(errno));
  madvise(map, map_len, MADV_SEQUENTIAL);
  const unsigned char* src = static_cast<const unsigned char*>(map) + (start - map_start);
  for (int64_t i = 0; i < n; ++i) {
    if (e.dtype == "F32") {
      std::memcpy(&out[i], src + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out[i] = e.dtype == "BF16" ? bf16_to_float(h) : fp16_to_float(h);
    }
  }
  munmap(map, map_len);
  bytes_read_ += e.end - e.begin;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(out[i]))
      fail(path_, "tensor '" + name + "' holds " + (std::isnan(out[i]) ? "NaN" : out[i] > 0 ? "+inf" : "-inf") + " at element " + std::to_string(i));
}

StWriter::StWriter(const std::string& path, const std::vector<StPlanned>& plan,
                   const std::map<std::string, std::string>& metadata)
    : path_(path), tmp_(path + ".tmp"), plan_(plan) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const StPlanned& t : plan_) {
    if (t.dtype != "F32" && t.dtype != "BF16") throw std::logic_error("StWriter writes F32 and BF16 only");
    const uint64_t bytes = st_bytes(t.dtype, t.shape);
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  out_ = std::fopen(tmp_.c_str(), "wb");
  if (!out_) throw std::runtime_error("cannot write '" + tmp_ + "': " + std::strerror(errno));
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = (unsigned char)((uint64_t)text.size() >> (8 * i));
  std::fwrite(len_bytes, 1, 8, out_);
  std::fwrite(text.data(), 1, text.size(), out_);
}

StWriter::~StWriter() {
  if (!out_) return;
  std::fclose(out_);
  std::error_code ec;
  std::filesystem::remove(tmp_, ec);
}

void StWriter::write_next(const std::string& name, const float* values) {
  if (next_ >= plan_.size() || plan_[next_].name != name)
    throw std::logic_error("StWriter: tensor '" + name + "' out of the planned order");
  const StPlanned& t = plan_[next_++];
  const int64_t n = numel_of(t.shape);
  if (t.dtype == "F32") {
    std::fwrite(values, 4, (size_t)n, out_);
    return;
  }
  std::vector<uint16_t> half(std::min<int64_t>(n, 1 << 16));
  for (int64_t i = 0; i < n; i += (int64_t)half.size()) {
    const int64_t m = std::min<int64_t>((int64_t)half.size(), n - i);
    for (int64_t j = 0; j < m; ++j) half[j] = float_to_bf16(values[i + j]);
    std::fwrite(half.data(), 2, (size_t)m, out_);
  }
}

void StWriter::finish() {
  if (next_ != plan_.size()) throw std::logic_error("StWriter: finished before its last tensor");
  const bool ok = std::fflush(out_) == 0 && !std::ferror(out_);
  std::fclose(out_);
  out_ = nullptr;
  if (!ok) {
    std::filesystem::remove(tmp_);
    throw std::runtime_error("write to '" + tmp_ + "' failed (disk full?)");
  }
  std::filesystem::rename(tmp_, path_);
}

}  // namespace pcmoe
