#include "privacy/noise.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "model/params.h"

namespace pcmoe {

struct NoiseSource::Cipher {
  EVP_CIPHER_CTX* ctx = nullptr;
  ~Cipher() { EVP_CIPHER_CTX_free(ctx); }
};

NoiseSource::NoiseSource(const std::array<unsigned char, 32>& key, bool hardened)
    : cipher_(std::make_unique<Cipher>()), hardened_(hardened) {
  cipher_->ctx = EVP_CIPHER_CTX_new();
  const unsigned char iv[16] = {};
  if (!cipher_->ctx || EVP_EncryptInit_ex(cipher_->ctx, EVP_aes_256_ctr(), nullptr, key.data(), iv) != 1)
    throw std::runtime_error("cannot initialise AES-256-CTR for the noise generator");
}

NoiseSource::NoiseSource(NoiseSource&&) noexcept = default;
NoiseSource& NoiseSource::operator=(NoiseSource&&) noexcept = default;
NoiseSource::~NoiseSource() = default;

NoiseSource NoiseSource::secure() {
  std::array<unsigned char, 32> key{};
  if (RAND_bytes(key.data(), (int)key.size()) != 1)
    throw std::runtime_error("the operating system's secure random generator failed (RAND_bytes)");
  return NoiseSource(key, true);
}

// The AES key SHA-256(secret || stream as 8 little-endian bytes).
NoiseSource NoiseSource::hashed(const unsigned char* secret, size_t len, uint64_t stream, bool hardened) {
  std::vector<unsigned char> in(secret, secret + len);
  for (int i = 0; i < 8; ++i) in.push_back((unsigned char)(stream >> (8 * i)));
  std::array<unsigned char, 32> key{};
  SHA256(in.data(), in.size(), key.data());
  return NoiseSource(key, hardened);
}

NoiseSource NoiseSource::seeded(uint64_t seed, uint64_t stream) {
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = (unsigned char)(seed >> (8 * i));
  return hashed(le, sizeof le, stream, false);
}

NoiseSource NoiseSource::keyed(const std::array<unsigned char, 32>& secret, uint64_t stream) {
  return hashed(secret.data(), secret.size(), stream, true);
}

void NoiseSource::refill() {
  // The keystream: AES-256-CTR over zeros.
  std::memset(block_.data(), 0, sizeof block_);
  unsigned char* p = reinterpret_cast<unsigned char*>(block_.data());
  int len = 0;
  if (EVP_EncryptUpdate(cipher_->ctx, p, &len, p, (int)sizeof block_) != 1 || len != (int)sizeof block_)
    throw std::runtime_error("AES-256-CTR keystream failed");
  used_ = 0;
}

uint64_t NoiseSource::next_u64() {
  if (used_ == block_.size()) refill();
  return block_[used_++];
}

double NoiseSource::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // u1 in (0, 1], u2 in [0, 1), 53 random bits each.
  const double u1 = ((next_u64() >> 11) + 1) * 0x1.0p-53;
  const double u2 = (next_u64() >> 11) * 0x1.0p-53;
  const double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * M_PI * u2;
  spare_ = r * std::sin(a);
  has_spare_ = true;
  return r * std::cos(a);
}

double NoiseSource::hardened_normal() {
  const double a = normal(), b = normal(), c = normal(), d = normal();
  return (a + b + c + d) * 0.5;
}

void NoiseSource::add_gaussian(float* x, size_t n, double std) {
  if (hardened_)
    for (size_t i = 0; i < n; ++i) x[i] = (float)((double)x[i] + std * hardened_normal());
  else
    for (size_t i = 0; i < n; ++i) x[i] = (float)((double)x[i] + std * normal());
}

void add_gaussian_noise(ParamSet& params, NoiseSource& src, double std) {
  for (const ParamTensor& t : params.tensors()) src.add_gaussian(params.grads() + t.offset, t.numel, std);
}

}  // namespace pcmoe
