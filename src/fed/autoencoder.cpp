#include "fed/autoencoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "tensor/gemm.h"
#include "tensor/safetensors.h"
#include "tensor/rng.h"

namespace pcmoe::fed {

BlockAutoencoder::BlockAutoencoder(int block, int latent, uint64_t seed)
    : B_(block), L_(latent), params_((size_t)2 * block * latent + block + latent), m_(params_.size()),
      v_(params_.size()) {
  Rng rng(splitmix64(seed ^ 0xae0c0deULL));
  float* we = params_.data();
  for (size_t i = 0; i < (size_t)L_ * B_; ++i) we[i] = (float)(rng.normal() / std::sqrt((double)B_));
  float* wd = we + (size_t)L_ * B_ + L_;
  for (size_t i = 0; i < (size_t)B_ * L_; ++i) wd[i] = (float)(rng.normal() / std::sqrt((double)L_));
}

void BlockAutoencoder::encode(const float* x, int M, float* z) const {
  matmul_nt(z, x, We(), M, L_, B_, false);
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < L_; ++j) z[(size_t)r * L_ + j] = std::tanh(z[(size_t)r * L_ + j] + be()[j]);
}

void BlockAutoencoder::decode(const float* z, int M, float* y) const {
  matmul_nt(y, z, Wd(), M, B_, L_, false);
  for (int r = 0; r < M; ++r)
    for (int i = 0; i < B_; ++i) y[(size_t)r * B_ + i] += bd()[i];
}

double BlockAutoencoder::loss(const float* x, int M) const {
  std::vector<float> z((size_t)M * L_), y((size_t)M * B_);
  encode(x, M, z.data());
  decode(z.data(), M, y.data());
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
  return s / (double)y.size();
}

double BlockAutoencoder::loss_and_grad(const float* x, int M, float* grads) {
  const size_t ML = (size_t)M * L_, MB = (size_t)M * B_;
  z_.resize(ML);
  y_.resize(MB);
  dy_.resize(MB);
  dz_.resize(ML);
  encode(x, M, z_.data());
  decode(z_.data(), M, y_.data());
  double loss = 0;
  const float k = 2.0f / (float)MB;
  for (size_t i = 0; i < MB; ++i) {
    const float d = y_[i] - x[i];
    loss += (double)d * d;
    dy_[i] = k * d;
  }
  float* dWe = grads;
  float* dbe = dWe + (size_t)L_ * B_;
  float* dWd = dbe + L_;
  float* dbd = dWd + (size_t)B_ * L_;
  // decoder: dWd = dy^T z, dbd = column sums of dy, dz = dy Wd
  matmul_tn(dWd, dy_.data(), z_.data(), B_, L_, M, false);
  std::fill(dbd, dbd + B_, 0.0f);
  for (int r = 0; r < M; ++r)
    for (int i = 0; i < B_; ++i) dbd[i] += dy_[(size_t)r * B_ + i];
  matmul_nn(dz_.data(), dy_.data(), Wd(), M, L_, B_, false);
  // through tanh: da = dz (1 - z^2); encoder: dWe = da^T x, dbe = column sums of da
  for (size_t i = 0; i < ML; ++i) dz_[i] *= 1.0f - z_[i] * z_[i];
  matmul_tn(dWe, dz_.data(), x, L_, B_, M, false);
  std::fill(dbe, dbe + L_, 0.0f);
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < L_; ++j) dbe[j] += dz_[(size_t)r * L_ + j];
  return loss / (double)MB;
}

void BlockAutoencoder::adam_step(const float* g, float lr) {
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  ++t_;
  const float bc1 = 1.0f - std::pow(b1, (float)t_), bc2_sqrt = std::sqrt(1.0f - std::pow(b2, (float)t_));
  for (size_t i = 0; i < params_.size(); ++i) {
    m_[i] = b1 * m_[i] + (1.0f - b1) * g[i];
    v_[i] = b2 * v_[i] + (1.0f - b2) * g[i] * g[i];
    params_[i] -= lr / bc1 * m_[i] / (std::sqrt(v_[i]) / bc2_sqrt + eps);
  }
}

size_t BlockAutoencoder::bytes() const {
  return (params_.size() + m_.size() + v_.size() + z_.capacity() + y_.capacity() + dy_.capacity() +
          dz_.capacity()) * sizeof(float);
}

float normalised_block(const float* u, size_t n, int B, size_t b, float* out) {
  const size_t start = b * (size_t)B, len = std::min((size_t)B, n - start);
  double sq = 0;
  for (size_t i = 0; i < len; ++i) sq += (double)u[start + i] * u[start + i];
  const float rms = (float)std::sqrt(sq / B);
  const float inv = rms > 0 ? 1.0f / rms : 0.0f;
  for (size_t i = 0; i < len; ++i) out[i] = u[start + i] * inv;
  std::fill(out + len, out + B, 0.0f);
  return rms;
}

void save_autoencoder(const BlockAutoencoder& ae, const std::string& path) {
  const int64_t B = ae.block(), L = ae.latent();
  StFile f;
  f.put_f32("We", {L, B}, ae.We());
  f.put_f32("be", {L}, ae.be());
  f.put_f32("Wd", {B, L}, ae.Wd());
  f.put_f32("bd", {B}, ae.bd());
  write_safetensors(path, f);
}

void load_autoencoder(const std::string& path, BlockAutoencoder& ae) {
  const StFile f = read_safetensors(path);
  const auto it = f.tensors.find("We");
  if (it == f.tensors.end() || it->second.shape.size() != 2)
    throw std::runtime_error("autoencoder checkpoint '" + path + "' holds no encoder matrix We [latent, block]");
  const int64_t L = it->second.shape[0], B = it->second.shape[1];
  if (B != ae.block() || L != ae.latent())
    throw std::runtime_error("autoencoder checkpoint '" + path + "' codes blocks of " + std::to_string(B) +
                             " floats into " + std::to_string(L) + "; this run's fed.block_size and fed.latent_ratio need " +
                             std::to_string(ae.block()) + " into " + std::to_string(ae.latent()));
  float* p = ae.params();
  const size_t we = (size_t)L * B;
  std::memcpy(p, f.get("We", {L, B}).f32(), we * 4);
  std::memcpy(p + we, f.get("be", {L}).f32(), L * 4);
  std::memcpy(p + we + L, f.get("Wd", {B, L}).f32(), we * 4);
  std::memcpy(p + 2 * we + L, f.get("bd", {B}).f32(), B * 4);
}

}  // namespace pcmoe::fed
