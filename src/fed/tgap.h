// Training the update autoencoder: sets of normalised blocks sampled from update vectors, Adam
// over them, and TGAP's recording of the updates of a short fine-tuning run on public data
// (consecutive steps: the temporal ensemble).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "fed/autoencoder.h"
#include "train/local_model.h"

namespace pcmoe::fed {

// Rows of B floats, each a block divided by its RMS.
struct BlockSet {
  int B = 0;
  std::vector<float> x;
  size_t rows() const { return B ? x.size() / B : 0; }
};

// Appends `count` blocks of u[n] drawn uniformly (with replacement) from `seed`; blocks that are
// all zero are drawn but not kept (they carry nothing to learn).
void sample_blocks(const float* u, size_t n, int count, uint64_t seed, BlockSet& out);

// Mean squared reconstruction error over the set.
double reconstruction_loss(const BlockAutoencoder& ae, const BlockSet& set);

// `epochs` passes of Adam over the set in seeded shuffled mini-batches of `batch` rows.
void train_autoencoder(BlockAutoencoder& ae, const BlockSet& set, int epochs, int batch, float lr, uint64_t seed);

// The trainable state of a ParamSet as one flat vector: each tensor's elements in layout order,
// without the padding between tensors (what crosses the wire in federated training).
size_t trainable_numel(const ParamSet& p);
void gather(const ParamSet& p, float* out);
void scatter(const float* in, ParamSet& p);

// Fills windows[grad_accum * batch_size, T+1] for training step `step`.
using BatchFn = std::function<void(int64_t step, int32_t* windows)>;

// TGAP's recording: `steps` consecutive AdamW steps of `m` (its own optimizer and schedule) on
// `data`; after each step, `blocks_per_step` blocks sampled from that step's update (new
// parameters minus old) are appended to the returned set.
BlockSet record_updates(LocalModel& m, const TrainConfig& tc, int steps, const BatchFn& data, int blocks_per_step,
                        int B, uint64_t seed);

}  // namespace pcmoe::fed
