// SHA-256 as lowercase hex (OpenSSL): the fingerprints parties and recordings compare.
#pragma once
#include <openssl/evp.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace pcmoe {

inline std::string sha256_hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr))
    throw std::runtime_error("SHA-256 failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

// SHA-256 of a file's bytes; throws naming a file it cannot read.
inline std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return sha256_hex(bytes.str());
}

}  // namespace pcmoe
