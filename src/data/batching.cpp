// Document split, training-window sampler and validation windows.
#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

#include "data/data.h"
#include "data/hashing.h"

namespace pcmoe::data {

Split split_documents(const Corpus& corpus, double val_fraction, uint64_t seed) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw std::runtime_error("val_fraction must be in [0, 1), got " + std::to_string(val_fraction));
  }
  // Splitting each category separately keeps every genre represented on both sides.
  std::map<std::string, std::vector<size_t>> by_category;
  for (size_t i = 0; i < corpus.docs.size(); ++i) by_category[corpus.docs[i].category].push_back(i);

  Split split;
  for (auto& [category, indices] : by_category) {
    const size_t n = indices.size();
    size_t n_val = 0;
    if (n >= 2 && val_fraction > 0.0) {
      n_val = std::clamp<size_t>(static_cast<size_t>(std::llround(val_fraction * n)), 1, n - 1);
    }
    // Fisher-Yates with a generator seeded by the split seed and the category name, so that
    // adding or removing a category leaves the other categories' splits unchanged.
    detail::Fnv1a64 name_hash;
    name_hash.update(category);
    detail::SplitMix64 rng(seed ^ name_hash.digest());
    for (size_t i = n; i > 1; --i) {
      std::swap(indices[i - 1], indices[detail::below(rng.next(), i)]);
    }
    split.val.insert(split.val.end(), indices.begin(), indices.begin() + n_val);
    split.train.insert(split.train.end(), indices.begin() + n_val, indices.end());
  }
  std::sort(split.train.begin(), split.train.end());
  std::sort(split.val.begin(), split.val.end());
  return split;
}

BatchSampler::BatchSampler(const TokenStream& stream, int seq_len, uint64_t seed)
    : stream_(&stream), seq_len_(seq_len), seed_(seed) {
  if (seq_len < 1) throw std::runtime_error("seq_len must be positive, got " + std::to_string(seq_len));
  if (stream.tokens.size() < static_cast<size_t>(seq_len) + 1) {
    throw std::runtime_error("training stream has " + std::to_string(stream.tokens.size()) +
                             " tokens, fewer than seq_len + 1 = " + std::to_string(seq_len + 1));
  }
}

void BatchSampler::sample(int64_t step, int micro, int batch, int32_t* out) const {
  const std::vector<int32_t>& tokens = stream_->tokens;
  const size_t window = static_cast<size_t>(seq_len_) + 1;
  const uint64_t n_starts = tokens.size() - window + 1;  // starts in [0, len - (seq_len + 1)]
  const uint64_t base = detail::mix64(detail::mix64(seed_ ^ detail::mix64(static_cast<uint64_t>(step))) ^
                                      static_cast<uint64_t>(micro));
  for (int row = 0; row < batch; ++row) {
    const uint64_t start = detail::below(detail::mix64(base ^ static_cast<uint64_t>(row)), n_starts);
    std::copy_n(tokens.begin() + static_cast<ptrdiff_t>(start), window, out + row * window);
  }
}

std::vector<int32_t> validation_windows(const TokenStream& stream, int seq_len, int max_windows,
                                        int* n_windows) {
  if (seq_len < 1) throw std::runtime_error("seq_len must be positive, got " + std::to_string(seq_len));
  if (max_windows < 0) throw std::runtime_error("max_windows must not be negative");
  const size_t window = static_cast<size_t>(seq_len) + 1;
  const size_t len = stream.tokens.size();
  // Window k covers [k*T, k*T + T]: consecutive windows share one token, so every token after the
  // first is a target exactly once. When there are more than max_windows, take max_windows of
  // them spread evenly over the stream, so that every part of it (every document group) counts.
  const size_t available = len >= window ? (len - 1) / static_cast<size_t>(seq_len) : 0;
  const size_t count_wanted = std::min(available, static_cast<size_t>(max_windows));
  std::vector<int32_t> out;
  out.reserve(count_wanted * window);
  for (size_t i = 0; i < count_wanted; ++i) {
    const size_t start = (i * available / count_wanted) * static_cast<size_t>(seq_len);
    out.insert(out.end(), stream.tokens.begin() + static_cast<ptrdiff_t>(start),
               stream.tokens.begin() + static_cast<ptrdiff_t>(start + window));
  }
  const int count = static_cast<int>(count_wanted);
  if (n_windows) *n_windows = count;
  return out;
}

}  // namespace pcmoe::data
