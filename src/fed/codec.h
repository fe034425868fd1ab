// Codecs for the uplink of federated training: a party encodes its update u[n] into the bytes
// it sends, the server decodes them back into n floats. Each side holds its own codec object
// (the party's may keep state across rounds, such as top-k's error-feedback residual).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "collab/transport.h"
#include "fed/autoencoder.h"

namespace pcmoe::fed {

class UpdateCodec {
 public:
  virtual ~UpdateCodec() = default;
  // Party side: the bytes for update u[n] (exactly encoded_bytes(n) of them).
  virtual Bytes encode(const float* u, size_t n) = 0;
  // Server side: out[n] from a message; throws std::runtime_error when its size is wrong.
  virtual void decode(const Bytes& msg, float* out, size_t n) const = 0;
  virtual size_t encoded_bytes(size_t n) const = 0;
  // Bytes of state the codec keeps between rounds (not counting an autoencoder it refers to).
  virtual size_t state_bytes() const { return 0; }
};

// fp32, as is: 4 n bytes.
class Fp32Codec final : public UpdateCodec {
 public:
  Bytes encode(const float* u, size_t n) override;
  void decode(const Bytes& msg, float* out, size_t n) const override;
  size_t encoded_bytes(size_t n) const override { return 4 * n; }
};

// 8-bit: per block of B floats an fp32 scale max|x|/127 and one int8 per float, x rounded to
// the nearest multiple of the scale: n + 4 ceil(n/B) bytes.
class Int8Codec final : public UpdateCodec {
 public:
  explicit Int8Codec(int block) : B_(block) {}
  Bytes encode(const float* u, size_t n) override;
  void decode(const Bytes& msg, float* out, size_t n) const override;
  size_t encoded_bytes(size_t n) const override { return n + 4 * n_blocks(n, B_); }

 private:
  int B_;
};

// Top-k sparsification with error feedback: the party adds its residual to the update, sends
// the k entries of largest magnitude (u32 index, f32 value; ties to the lower index, indices
// ascending) and keeps the rest as the next residual: 8 k bytes.
class TopKCodec final : public UpdateCodec {
 public:
  TopKCodec(size_t n, size_t k);
  Bytes encode(const float* u, size_t n) override;
  void decode(const Bytes& msg, float* out, size_t n) const override;
  size_t encoded_bytes(size_t n) const override { return 8 * k_; }
  size_t state_bytes() const override { return (residual_.size() + order_.size()) * 4; }
  const std::vector<float>& residual() const { return residual_; }

 private:
  size_t n_, k_;
  // The encoder's (the party's): made by the first encode(), so a decoder holds neither.
  std::vector<float> residual_;
  std::vector<uint32_t> order_;  // scratch of the selection
};

// CG-FedLLM: per block of B floats its RMS (f32) and the latent of the normalised block (L f32):
// 4 (1 + L) ceil(n/B) bytes. A partial last block is zero-padded; decode keeps its first floats.
// Encodes and decodes with the autoencoder `ae` refers to (a party's copy, or the server's).
class AutoencoderCodec final : public UpdateCodec {
 public:
  explicit AutoencoderCodec(const BlockAutoencoder& ae) : ae_(ae) {}
  Bytes encode(const float* u, size_t n) override;
  void decode(const Bytes& msg, float* out, size_t n) const override;
  size_t encoded_bytes(size_t n) const override { return 4 * (1 + (size_t)ae_.latent()) * n_blocks(n, ae_.block()); }

 private:
  const BlockAutoencoder& ae_;
};

// k of topk-ef: as many (index, value) pairs as the autoencoder's bytes for n floats hold.
size_t matched_topk(size_t n, int block, int latent);

// Reconstruction quality of `approx` against `exact`: cosine, and SNR in dB,
// 10 log10(|exact|^2 / |exact - approx|^2) (infinite when equal).
struct Fidelity {
  double cosine = 0, snr_db = 0;
};
Fidelity fidelity(const float* exact, const float* approx, size_t n);

}  // namespace pcmoe::fed
