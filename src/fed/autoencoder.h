// CG-FedLLM's update autoencoder over fixed-size blocks of an update vector, forward and
// backward written out over flat arrays. A block x (B floats) is first divided by its RMS s
// (sent beside the latent, so the autoencoder only learns directions); then
//   encoder (party):  z = tanh(We x + be)          We [L,B], be [L]   (the latent on the wire)
//   decoder (server): y = Wd z + bd                Wd [B,L], bd [B]
// and the loss of M blocks is the mean squared error (1/(M B)) sum (y - x)^2.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pcmoe::fed {

class BlockAutoencoder {
 public:
  // Weights from N(0, 1/fan_in) drawn from `seed`, biases zero.
  BlockAutoencoder(int block, int latent, uint64_t seed);
  int block() const { return B_; }
  int latent() const { return L_; }

  // Parameters in one flat vector: We, be, Wd, bd (in that order).
  size_t numel() const { return params_.size(); }
  float* params() { return params_.data(); }
  const float* params() const { return params_.data(); }
  const float* We() const { return params_.data(); }
  const float* be() const { return We() + (size_t)L_ * B_; }
  const float* Wd() const { return be() + L_; }
  const float* bd() const { return Wd() + (size_t)B_ * L_; }

  // x[M,B] (normalised blocks) -> z[M,L]; z[M,L] -> y[M,B].
  void encode(const float* x, int M, float* z) const;
  void decode(const float* z, int M, float* y) const;
  // The loss of x[M,B].
  double loss(const float* x, int M) const;
  // The loss of x[M,B]; writes its gradient with respect to params() into grads[numel()].
  double loss_and_grad(const float* x, int M, float* grads);
  // One Adam step (torch.optim.Adam, no weight decay) with gradient `grads`; state kept here.
  void adam_step(const float* grads, float lr);
  // Bytes this object holds: parameters, Adam moments and the scratch of the largest batch seen.
  size_t bytes() const;

 private:
  int B_, L_;
  std::vector<float> params_, m_, v_;
  int64_t t_ = 0;
  std::vector<float> z_, y_, dy_, dz_;  // scratch of loss_and_grad
};

// The parameters as safetensors (We [L,B], be [L], Wd [B,L], bd [B]; the Adam state is not kept).
void save_autoencoder(const BlockAutoencoder& ae, const std::string& path);
// Loads a saved autoencoder into `ae`; throws std::runtime_error naming the file when it cannot
// be read or its block size or latent differ from ae's.
void load_autoencoder(const std::string& path, BlockAutoencoder& ae);

// Block b of u[n] (B floats, zero past n), divided by its RMS; returns the RMS (0: an all-zero
// block, left as zeros).
float normalised_block(const float* u, size_t n, int B, size_t b, float* out);
inline size_t n_blocks(size_t n, int B) { return (n + B - 1) / B; }

}  // namespace pcmoe::fed
