#include "tensor/safetensors.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace pcmoe {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error("safetensors file '" + path + "': " + why);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

StTensor make(const std::string& dtype, std::vector<int64_t> shape, const void* values) {
  StTensor t{dtype, std::move(shape), {}};
  t.data.resize(static_cast<size_t>(t.numel()) * 4);
  if (!t.data.empty()) std::memcpy(t.data.data(), values, t.data.size());
  return t;
}

}  // namespace

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
const float* StTensor::f32() const { return reinterpret_cast<const float*>(data.data()); }
const int32_t* StTensor::i32() const { return reinterpret_cast<const int32_t*>(data.data()); }

void StFile::put_f32(const std::string& name, std::vector<int64_t> shape, const float* values) {
  tensors[name] = make("F32", std::move(shape), values);
}
void StFile::put_i32(const std::string& name, std::vector<int64_t> shape, const int32_t* values) {
  tensors[name] = make("I32", std::move(shape), values);
}

const StTensor& StFile::get(const std::string& name, const std::vector<int64_t>& shape,
                            const std::string& dtype) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error("tensor '" + name + "' is missing");
  if (it->second.dtype != dtype || it->second.shape != shape)
    throw std::runtime_error("tensor '" + name + "' is " + it->second.dtype + " " +
                             shape_str(it->second.shape) + ", expected " + dtype + " " +
                             shape_str(shape));
  return it->second;
}

uint64_t safetensors_header_length(const unsigned char* len_bytes, uint64_t file_size, const std::string& path) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > file_size - 8) fail(path, "truncated (header length " + std::to_string(n) + " exceeds the file)");
  return n;
}

nlohmann::json parse_safetensors_header(const std::string& header, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    fail(path, std::string("malformed header: ") + e.what());
  }
  if (!j.is_object()) fail(path, "malformed header: not a JSON object");
  return j;
}

StFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  unsigned char len_bytes[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len_bytes), 8)) fail(path, "truncated (no header length)");
  const uint64_t header_len = safetensors_header_length(len_bytes, file_size, path);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  const uint64_t data_size = file_size - 8 - header_len;
  const nlohmann::json j = parse_safetensors_header(header, path);

  StFile file;
  std::vector<std::byte> data(data_size);
  if (data_size && !in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data_size)))
    fail(path, "truncated data");
  for (auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path, "__metadata__ is not an object");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail(path, "metadata value '" + k + "' is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    try {
      StTensor t;
      t.dtype = entry.at("dtype").get<std::string>();
      if (t.dtype != "F32" && t.dtype != "I32") fail(path, "tensor '" + name + "' has unsupported dtype " + t.dtype);
      t.shape = entry.at("shape").get<std::vector<int64_t>>();
      for (int64_t d : t.shape)
        if (d < 0) fail(path, "tensor '" + name + "' has a negative dimension");
      auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
        fail(path, "tensor '" + name + "' has data offsets outside the file (truncated?)");
      if (offsets[1] - offsets[0] != static_cast<uint64_t>(t.numel()) * 4)
        fail(path, "tensor '" + name + "' byte range does not match its shape");
      t.data.assign(data.begin() + static_cast<std::ptrdiff_t>(offsets[0]),
                    data.begin() + static_cast<std::ptrdiff_t>(offsets[1]));
      // Every reader (checkpoints, resumes, init_from, the autoencoder) refuses NaN and inf here,
      // once: loaded, they would only turn every loss into NaN.
      if (t.dtype == "F32")
        for (int64_t i = 0; i < t.numel(); ++i)
          if (!std::isfinite(t.f32()[i]))
            fail(path, "tensor '" + name + "' holds " + (std::isnan(t.f32()[i]) ? "NaN" : t.f32()[i] > 0 ? "+inf" : "-inf") +
                           " at element " + std::to_string(i) + " (the run that wrote it diverged, or the file is damaged)");
      file.tensors[name] = std::move(t);
    } catch (const nlohmann::json::exception& e) {
      fail(path, "malformed entry for tensor '" + name + "': " + e.what());
    }
  }
  return file;
}

void write_safetensors(const std::string& path, const StFile& file) {
  nlohmann::json header = nlohmann::json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write '" + tmp + "'");
    unsigned char len_bytes[8];
    uint64_t len = text.size();
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(len >> (8 * i));
    out.write(reinterpret_cast<const char*>(len_bytes), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : file.tensors)
      out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
    out.flush();
    if (!out) throw std::runtime_error("write to '" + tmp + "' failed (disk full?)");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace pcmoe
