// SentencePiece tokenizer: training (cached by content hash), loading and encoding.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "common/child_process.h"
#include "data/data.h"
#include "data/hashing.h"

namespace pcmoe::data {
namespace {

namespace fs = std::filesystem;

// Bump when the training recipe below changes, so that cached models trained with the old
// recipe are not reused.
constexpr const char* kRecipeVersion = "pcmoe-spm-2";
// SentencePiece drops training sentences longer than its max_sentence_length; documents are fed
// in chunks of at most this many bytes, cut at whitespace.
constexpr size_t kMaxSentenceBytes = 1 << 16;
// The trainer's "words" are runs without ' ' ('\n' does not split them). SentencePiece 0.1.97's
// BPE trainer stores a pair's place as word << 32 | (index << 16 | index + 1), the part in
// parentheses an int: from index 32768 on it is negative, sign-extends over the word, which then
// reads as -1, and the trainer reads before its arrays (SIGSEGV in bpe::Trainer::ComputeFreq; a
// base64 attachment is such a word). Longer runs are therefore cut into chunks of their own, at a
// line break where there is one; pieces are at most 16 characters (max_sentencepiece_length), so
// only the few pieces across a cut are lost.
constexpr size_t kMaxWordBytes = 1 << 12;

// Where the chunk of `text` that starts at `begin` ends: at the end of the text if the text fits,
// else before the last space or line break under the limit (within the over-long run, if a run
// is too long), else at the limit backed off to a UTF-8 character boundary.
size_t chunk_end(const std::string& text, size_t begin) {
  size_t limit = std::min(text.size(), begin + kMaxSentenceBytes);
  size_t floor = begin;  // a cut at whitespace must fall after this
  bool long_run = false;
  for (size_t i = begin, run = begin; i < limit; ++i) {
    if (text[i] == ' ') {
      run = i + 1;
    } else if (i - run == kMaxWordBytes) {
      limit = i;
      floor = run;
      long_run = true;
    }
  }
  if (!long_run && limit == text.size()) return limit;
  const size_t cut = text.find_last_of(long_run ? "\n" : " \n", limit - 1);
  if (cut != std::string::npos && cut > floor) return cut;
  size_t end = limit;
  while (end > begin + 1 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return end;
}

// Training sentences: whole documents (so that the model sees paragraph breaks where encode()
// will), cut into chunks that SentencePiece accepts (see chunk_end).
class ChunkIterator : public sentencepiece::SentenceIterator {
 public:
  ChunkIterator(const Corpus& corpus, const std::vector<size_t>& docs) : corpus_(corpus), docs_(docs) {
    advance();
  }
  bool done() const override { return doc_ >= docs_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return chunk_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  // Moves to the next non-empty chunk.
  void advance() {
    while (doc_ < docs_.size()) {
      const std::string& text = corpus_.docs.at(docs_[doc_]).text;
      if (offset_ >= text.size()) {
        ++doc_;
        offset_ = 0;
        continue;
      }
      const size_t end = chunk_end(text, offset_);
      chunk_ = text.substr(offset_, end - offset_);
      offset_ = end;
      if (!chunk_.empty()) return;
    }
  }

  const Corpus& corpus_;
  const std::vector<size_t>& docs_;
  size_t doc_ = 0;
  size_t offset_ = 0;
  std::string chunk_;
};

void check(const sentencepiece::util::Status& status, const std::string& what) {
  if (!status.ok()) throw std::runtime_error(what + ": " + status.ToString());
}

// Writes via a temporary file and a rename, so that a concurrent reader or a crash never leaves
// a partial model under the final name.
void write_atomically(const fs::path& path, const std::string& bytes) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp);
    throw std::runtime_error("cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message());
  }
}

}  // namespace

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor processor;
  std::string model_file;
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& model_file) {
  if (!fs::is_regular_file(model_file)) throw std::runtime_error("tokenizer model not found at " + model_file);
  Tokenizer tok;
  tok.impl_ = std::make_unique<Impl>();
  check(tok.impl_->processor.Load(model_file), "cannot load tokenizer model " + model_file);
  tok.impl_->model_file = model_file;
  return tok;
}

Tokenizer Tokenizer::train_or_load(const Corpus& corpus, const std::vector<size_t>& docs,
                                   const DataConfig& cfg) {
  if (cfg.tokenizer_type != "bpe" && cfg.tokenizer_type != "unigram") {
    throw std::runtime_error("unknown tokenizer type '" + cfg.tokenizer_type + "' (expected bpe or unigram)");
  }
  if (docs.empty()) throw std::runtime_error("cannot train a tokenizer on zero documents");

  detail::Fnv1a64 hash;
  hash.update_field(kRecipeVersion);
  hash.update_field(cfg.tokenizer_type);
  hash.update_u64(static_cast<uint64_t>(cfg.vocab_size));
  for (size_t index : docs) hash.update_field(corpus.docs.at(index).text);
  char key[17];
  std::snprintf(key, sizeof key, "%016llx", static_cast<unsigned long long>(hash.digest()));
  const fs::path model_path = fs::path(cfg.cache_dir) / ("tok-" + std::string(key) + ".model");
  if (fs::exists(model_path)) return load(model_path.string());

  std::cerr << "training tokenizer (vocab " << cfg.vocab_size << ") on " << docs.size()
            << " documents -> " << model_path.string() << " ..." << std::endl;
  // Lossless and reproducible: identity normalization keeps the text as is, byte fallback covers
  // any byte unseen in training, '\n' (paragraph break) is a piece of its own, and no input
  // sentence is sampled or shuffled.
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", cfg.tokenizer_type},
      {"vocab_size", std::to_string(cfg.vocab_size)},
      {"character_coverage", "1.0"},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"user_defined_symbols", "\n"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", "2"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
      {"minloglevel", "1"},
  };
  std::string model_proto;
  try {
    model_proto = run_in_child([&] {
      sentencepiece::SetRandomGeneratorSeed(1);  // in case a trainer draws random numbers after all
      ChunkIterator sentences(corpus, docs);
      std::string proto;
      check(sentencepiece::SentencePieceTrainer::Train(args, &sentences, &proto), "tokenizer training failed");
      return proto;
    });
  } catch (const ChildCrashed& e) {
    throw std::runtime_error("tokenizer training crashed inside SentencePiece (" + std::string(e.what()) +
                             "); try data.tokenizer_type \"" +
                             (cfg.tokenizer_type == "bpe" ? "unigram" : "bpe") +
                             "\" or leave binary or encoded text (e.g. base64 attachments) out of the corpus");
  }
  fs::create_directories(cfg.cache_dir);
  write_atomically(model_path, model_proto);
  return load(model_path.string());
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  std::vector<int> ids;
  check(impl_->processor.Encode(text, &ids), "tokenizer encode failed");
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  const int n = impl_->processor.GetPieceSize();
  for (int32_t id : ids) {
    if (id < 0 || id >= n) throw std::runtime_error("token id " + std::to_string(id) + " out of range");
  }
  std::string text;
  check(impl_->processor.Decode(std::vector<int>(ids.begin(), ids.end()), &text), "tokenizer decode failed");
  return text;
}

std::vector<std::string> Tokenizer::token_texts() const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  const auto& sp = impl_->processor;
  std::vector<std::string> out(sp.GetPieceSize());
  for (int id = 0; id < (int)out.size(); ++id) {
    const std::string piece = sp.IdToPiece(id);
    if (sp.IsControl(id) || sp.IsUnknown(id)) {
      out[id] = "\n";
    } else if (sp.IsByte(id)) {  // "<0xAB>"
      out[id] = std::string(1, (char)std::stoi(piece.substr(3, 2), nullptr, 16));
    } else {
      for (size_t i = 0; i < piece.size();) {
        const bool space = piece.compare(i, 3, "\xe2\x96\x81") == 0;  // U+2581
        out[id] += space ? std::string(" ") : piece.substr(i, 1);
        i += space ? 3 : 1;
      }
    }
  }
  return out;
}

int Tokenizer::vocab_size() const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  return impl_->processor.GetPieceSize();
}

int Tokenizer::bos_id() const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  return impl_->processor.bos_id();
}

int Tokenizer::eos_id() const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  return impl_->processor.eos_id();
}

const std::string& Tokenizer::model_file() const {
  if (!impl_) throw std::runtime_error("tokenizer is not loaded");
  return impl_->model_file;
}

namespace {

// Encodes in a child process (see train_or_load): a crash inside SentencePiece on some
// document's text becomes an error.
TokenStream encode_uncached(const Tokenizer& tok, const Corpus& corpus, const std::vector<size_t>& docs) {
  std::string bytes;
  try {
    bytes = run_in_child([&] {
      std::vector<int32_t> tokens;
      for (size_t index : docs) {
        const std::vector<int32_t> ids = tok.encode(corpus.docs.at(index).text);
        tokens.push_back(tok.bos_id());
        tokens.insert(tokens.end(), ids.begin(), ids.end());
        tokens.push_back(tok.eos_id());
      }
      return std::string(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(int32_t));
    });
  } catch (const ChildCrashed& e) {
    throw std::runtime_error("encoding the corpus crashed inside SentencePiece (" + std::string(e.what()) +
                             "); leave binary or encoded text (e.g. base64 attachments) out of the corpus");
  }
  TokenStream stream;
  stream.tokens.resize(bytes.size() / sizeof(int32_t));
  if (!bytes.empty()) std::memcpy(stream.tokens.data(), bytes.data(), bytes.size());
  return stream;
}

uint64_t token_checksum(const std::vector<int32_t>& tokens) {
  detail::Fnv1a64 h;
  h.update(std::string_view(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(int32_t)));
  return h.digest();
}

// A cached stream file: u64 token count, u64 checksum of the tokens, then the tokens (int32,
// little-endian). Anything else (truncated, altered) reads as a miss.
bool read_stream(const fs::path& path, TokenStream& out) {
  std::ifstream in(path, std::ios::binary);
  uint64_t count = 0, checksum = 0;
  if (!in.read(reinterpret_cast<char*>(&count), 8) || !in.read(reinterpret_cast<char*>(&checksum), 8)) return false;
  if (count != (fs::file_size(path) - 16) / sizeof(int32_t) || (fs::file_size(path) - 16) % sizeof(int32_t)) return false;
  out.tokens.resize(count);
  if (!in.read(reinterpret_cast<char*>(out.tokens.data()), static_cast<std::streamsize>(count * sizeof(int32_t)))) return false;
  return token_checksum(out.tokens) == checksum;
}

}  // namespace

TokenStream encode_documents(const Tokenizer& tok, const Corpus& corpus, const std::vector<size_t>& docs,
                             const std::string& cache_dir) {
  if (cache_dir.empty()) return encode_uncached(tok, corpus, docs);
  // Keyed by the tokenizer model's bytes and the documents' texts, in order.
  detail::Fnv1a64 key;
  key.update_field("pcmoe-stream-1");
  {
    std::ifstream model(tok.model_file(), std::ios::binary);
    std::ostringstream bytes;
    bytes << model.rdbuf();
    key.update_field(bytes.str());
  }
  for (size_t index : docs) key.update_field(corpus.docs.at(index).text);
  char name[40];
  std::snprintf(name, sizeof name, "stream-%016llx.bin", static_cast<unsigned long long>(key.digest()));
  const fs::path path = fs::path(cache_dir) / name;
  TokenStream stream;
  if (fs::is_regular_file(path) && read_stream(path, stream)) return stream;
  stream = encode_uncached(tok, corpus, docs);
  fs::create_directories(cache_dir);
  std::string bytes(16 + stream.tokens.size() * sizeof(int32_t), '\0');
  const uint64_t count = stream.tokens.size(), checksum = token_checksum(stream.tokens);
  std::memcpy(bytes.data(), &count, 8);
  std::memcpy(bytes.data() + 8, &checksum, 8);
  if (count) std::memcpy(bytes.data() + 16, stream.tokens.data(), count * sizeof(int32_t));
  write_atomically(path, bytes);
  return stream;
}

}  // namespace pcmoe::data
