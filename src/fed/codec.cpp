#include "fed/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace pcmoe::fed {
namespace {

void expect_size(const Bytes& msg, size_t want, const char* codec) {
  if (msg.size() != want)
    throw std::runtime_error(std::string(codec) + " update message has " + std::to_string(msg.size()) +
                             " bytes, expected " + std::to_string(want));
}

// Blocks encoded per batch of the autoencoder (bounds its scratch).
constexpr size_t kChunk = 256;

}  // namespace

Bytes Fp32Codec::encode(const float* u, size_t n) {
  Writer w;
  w.floats(u, n);
  return w.take();
}

void Fp32Codec::decode(const Bytes& msg, float* out, size_t n) const {
  expect_size(msg, encoded_bytes(n), "fp32");
  Reader r(msg);
  r.floats(out, n);
}

Bytes Int8Codec::encode(const float* u, size_t n) {
  Bytes out(encoded_bytes(n));
  std::byte* p = out.data();
  for (size_t b = 0; b < n_blocks(n, B_); ++b) {
    const size_t start = b * B_, len = std::min((size_t)B_, n - start);
    float mx = 0;
    for (size_t i = 0; i < len; ++i) mx = std::max(mx, std::fabs(u[start + i]));
    const float scale = mx / 127.0f, inv = mx > 0 ? 127.0f / mx : 0.0f;
    std::memcpy(p, &scale, 4);
    p += 4;
    for (size_t i = 0; i < len; ++i) {
      const float q = std::clamp(std::nearbyint(u[start + i] * inv), -127.0f, 127.0f);
      *p++ = static_cast<std::byte>(static_cast<int8_t>(q));
    }
  }
  return out;
}

void Int8Codec::decode(const Bytes& msg, float* out, size_t n) const {
  expect_size(msg, encoded_bytes(n), "int8");
  const std::byte* p = msg.data();
  for (size_t b = 0; b < n_blocks(n, B_); ++b) {
    const size_t start = b * B_, len = std::min((size_t)B_, n - start);
    float scale;
    std::memcpy(&scale, p, 4);
    p += 4;
    for (size_t i = 0; i < len; ++i) out[start + i] = scale * (float)static_cast<int8_t>(*p++);
  }
}

TopKCodec::TopKCodec(size_t n, size_t k) : n_(n), k_(k) {
  if (k == 0 || k > n) throw std::runtime_error("top-k needs 1 <= k <= n (k " + std::to_string(k) + ", n " + std::to_string(n) + ")");
  if (n > std::numeric_limits<uint32_t>::max()) throw std::runtime_error("top-k indices are u32: update too large");
}

Bytes TopKCodec::encode(const float* u, size_t n) {
  if (n != n_) throw std::runtime_error("top-k codec made for " + std::to_string(n_) + " floats, got " + std::to_string(n));
  if (residual_.empty()) {
    residual_.assign(n, 0.0f);
    order_.resize(n);
  }
  float* e = residual_.data();
  for (size_t i = 0; i < n; ++i) {
    e[i] += u[i];
    order_[i] = (uint32_t)i;
  }
  auto larger = [e](uint32_t a, uint32_t b) {
    const float x = std::fabs(e[a]), y = std::fabs(e[b]);
    return x > y || (x == y && a < b);
  };
  std::nth_element(order_.begin(), order_.begin() + (k_ - 1), order_.end(), larger);
  std::sort(order_.begin(), order_.begin() + k_);
  Writer w;
  for (size_t j = 0; j < k_; ++j) {
    const uint32_t i = order_[j];
    w.u32(i);
    w.f32(e[i]);
    e[i] = 0;
  }
  return w.take();
}

void TopKCodec::decode(const Bytes& msg, float* out, size_t n) const {
  expect_size(msg, encoded_bytes(n), "top-k");
  std::fill(out, out + n, 0.0f);
  Reader r(msg);
  for (size_t j = 0; j < k_; ++j) {
    const uint32_t i = r.u32();
    const float v = r.f32();
    if (i >= n) throw std::runtime_error("top-k update message: index " + std::to_string(i) + " out of range");
    out[i] = v;
  }
}

Bytes AutoencoderCodec::encode(const float* u, size_t n) {
  const int B = ae_.block(), L = ae_.latent();
  const size_t nb = n_blocks(n, B);
  std::vector<float> x(kChunk * B), z(kChunk * L), scale(kChunk);
  Writer w;
  for (size_t b0 = 0; b0 < nb; b0 += kChunk) {
    const int M = (int)std::min(kChunk, nb - b0);
    for (int r = 0; r < M; ++r) scale[r] = normalised_block(u, n, B, b0 + r, x.data() + (size_t)r * B);
    ae_.encode(x.data(), M, z.data());
    for (int r = 0; r < M; ++r) {
      w.f32(scale[r]);
      w.floats(z.data() + (size_t)r * L, L);
    }
  }
  return w.take();
}

void AutoencoderCodec::decode(const Bytes& msg, float* out, size_t n) const {
  expect_size(msg, encoded_bytes(n), "autoencoder");
  const int B = ae_.block(), L = ae_.latent();
  const size_t nb = n_blocks(n, B);
  std::vector<float> y(kChunk * B), z(kChunk * L), scale(kChunk);
  Reader rd(msg);
  for (size_t b0 = 0; b0 < nb; b0 += kChunk) {
    const int M = (int)std::min(kChunk, nb - b0);
    for (int r = 0; r < M; ++r) {
      scale[r] = rd.f32();
      rd.floats(z.data() + (size_t)r * L, L);
    }
    ae_.decode(z.data(), M, y.data());
    for (int r = 0; r < M; ++r) {
      const size_t start = (b0 + r) * B, len = std::min((size_t)B, n - start);
      for (size_t i = 0; i < len; ++i) out[start + i] = scale[r] * y[(size_t)r * B + i];
    }
  }
}

size_t matched_topk(size_t n, int block, int latent) {
  return std::clamp<size_t>(4 * (1 + (size_t)latent) * n_blocks(n, block) / 8, 1, n);
}

Fidelity fidelity(const float* exact, const float* approx, size_t n) {
  double dot = 0, ee = 0, aa = 0, dd = 0;
  for (size_t i = 0; i < n; ++i) {
    dot += (double)exact[i] * approx[i];
    ee += (double)exact[i] * exact[i];
    aa += (double)approx[i] * approx[i];
    const double d = (double)exact[i] - approx[i];
    dd += d * d;
  }
  Fidelity f;
  f.cosine = ee > 0 && aa > 0 ? dot / std::sqrt(ee * aa) : 0;
  f.snr_db = dd > 0 ? 10 * std::log10(ee / dd) : std::numeric_limits<double>::infinity();
  return f;
}

}  // namespace pcmoe::fed
