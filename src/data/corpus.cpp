// Corpus loaders: the tagged Brown corpus, a directory of .txt files, and JSONL.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include "data/data.h"

namespace pcmoe::data {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw std::runtime_error("error reading " + path.string());
  return buffer.str();
}

// Splits on '\n', dropping a trailing '\r' so that CRLF files read like LF files.
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
}

std::vector<std::string> split_whitespace(const std::string& s) {
  std::vector<std::string> tokens;
  std::istringstream in(s);
  std::string token;
  while (in >> token) tokens.push_back(std::move(token));
  return tokens;
}

// Turns a paragraph of Brown words (tags already removed) back into running text: punctuation
// attaches to its neighbour, `` and '' become '"', and a lone ' is an opening or a closing single
// quote in turn. Brown keeps clitics inside their words ("didn't"), so they need no rule here.
class Detokenizer {
 public:
  void add(const std::string& word) {
    if (word == "``") {
      open("\"");
    } else if (word == "''") {
      close("\"");
    } else if (word == "'") {
      in_single_quote_ ? close("'") : open("'");
      in_single_quote_ = !in_single_quote_;
    } else if (word == "(" || word == "[") {
      open(word);
    } else if (word == "," || word == "." || word == ";" || word == ":" || word == "?" ||
               word == "!" || word == ")" || word == "]") {
      close(word);
    } else {
      plain(word);
    }
  }
  std::string take() { return std::move(text_); }

 private:
  void space_unless_glued() {
    if (!text_.empty() && !glue_next_) text_ += ' ';
  }
  void open(std::string_view mark) {
    space_unless_glued();
    text_ += mark;
    glue_next_ = true;
  }
  void close(std::string_view mark) {
    text_ += mark;
    glue_next_ = false;
  }
  void plain(std::string_view word) {
    space_unless_glued();
    text_ += word;
    glue_next_ = false;
  }

  std::string text_;
  bool glue_next_ = false;
  bool in_single_quote_ = false;
};

// The word of a Brown "word/TAG" token: the tag follows the last '/', since words such as
// "1-1/2" or "and/or" contain '/' themselves.
std::string_view strip_tag(std::string_view token) {
  const size_t slash = token.rfind('/');
  return slash == std::string_view::npos ? token : token.substr(0, slash);
}

// One Brown file: paragraphs are blocks of lines separated by blank lines.
std::string brown_text(const std::string& raw) {
  std::string text;
  Detokenizer paragraph;
  bool paragraph_open = false;
  auto finish_paragraph = [&] {
    if (!paragraph_open) return;
    if (!text.empty()) text += '\n';
    text += paragraph.take();
    paragraph = Detokenizer();
    paragraph_open = false;
  };
  for (const std::string& line : split_lines(raw)) {
    if (is_blank(line)) {
      finish_paragraph();
      continue;
    }
    for (const std::string& token : split_whitespace(line)) {
      const std::string_view word = strip_tag(token);
      if (word.empty()) continue;
      paragraph.add(std::string(word));
      paragraph_open = true;
    }
  }
  finish_paragraph();
  return text;
}

void require_text(const Corpus& corpus, const std::string& where) {
  if (corpus.docs.empty()) throw std::runtime_error("corpus " + where + " has no documents");
  const bool all_empty = std::all_of(corpus.docs.begin(), corpus.docs.end(),
                                     [](const Document& d) { return is_blank(d.text); });
  if (all_empty) throw std::runtime_error("corpus " + where + " has only empty documents");
}

void require_directory(const fs::path& dir, const std::string& what) {
  if (!fs::exists(dir)) throw std::runtime_error(what + " not found at " + dir.string());
  if (!fs::is_directory(dir)) throw std::runtime_error(what + " at " + dir.string() + " is not a directory");
}

std::string optional_string(const nlohmann::json& object, const char* key, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end()) return {};
  if (!it->is_string()) throw std::runtime_error(where + ": \"" + key + "\" must be a string");
  return it->get<std::string>();
}

}  // namespace

Corpus load_brown(const std::string& package_dir) {
  const fs::path dir(package_dir);
  if (!fs::is_directory(dir)) {
    throw std::runtime_error("Brown corpus not found at " + package_dir + "; run scripts/fetch_brown.sh");
  }
  const fs::path cats_path = dir / "cats.txt";
  if (!fs::exists(cats_path)) {
    throw std::runtime_error("Brown corpus at " + package_dir +
                             " has no cats.txt; run scripts/fetch_brown.sh");
  }
  Corpus corpus{"brown", {}};
  std::set<std::string> seen;
  const std::vector<std::string> lines = split_lines(read_file(cats_path));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (is_blank(lines[i])) continue;
    const std::vector<std::string> fields = split_whitespace(lines[i]);
    const std::string where = cats_path.string() + ":" + std::to_string(i + 1);
    if (fields.size() != 2) throw std::runtime_error(where + ": expected \"<file> <category>\"");
    const std::string& id = fields[0];
    if (id.find('/') != std::string::npos || id == "." || id == "..") {
      throw std::runtime_error(where + ": invalid document name '" + id + "'");
    }
    if (!seen.insert(id).second) throw std::runtime_error(where + ": duplicate document '" + id + "'");
    const fs::path doc_path = dir / id;
    if (!fs::is_regular_file(doc_path)) {
      throw std::runtime_error("Brown document " + id + " listed in cats.txt is missing from " +
                               package_dir + "; run scripts/fetch_brown.sh again");
    }
    corpus.docs.push_back({id, fields[1], brown_text(read_file(doc_path))});
  }
  std::sort(corpus.docs.begin(), corpus.docs.end(),
            [](const Document& a, const Document& b) { return a.id < b.id; });
  require_text(corpus, package_dir);
  return corpus;
}

Corpus load_text_dir(const std::string& dir) {
  const fs::path root(dir);
  require_directory(root, "text corpus directory");
  Corpus corpus{"text:" + dir, {}};
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".txt") continue;
    const fs::path relative = entry.path().lexically_relative(root);
    // A file directly in `dir` has a one-component relative path.
    const bool in_subdir = std::distance(relative.begin(), relative.end()) > 1;
    std::string text = read_file(entry.path());
    std::erase(text, '\r');
    corpus.docs.push_back({relative.generic_string(),
                           in_subdir ? relative.begin()->string() : "default", std::move(text)});
  }
  if (corpus.docs.empty()) throw std::runtime_error("no .txt files found under " + dir);
  std::sort(corpus.docs.begin(), corpus.docs.end(),
            [](const Document& a, const Document& b) { return a.id < b.id; });
  require_text(corpus, dir);
  return corpus;
}

Corpus load_jsonl(const std::string& path) {
  if (!fs::is_regular_file(path)) throw std::runtime_error("JSONL corpus not found at " + path);
  Corpus corpus{"jsonl:" + path, {}};
  std::set<std::string> ids;
  const std::vector<std::string> lines = split_lines(read_file(path));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (is_blank(lines[i])) continue;
    const std::string where = path + ":" + std::to_string(i + 1);
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(lines[i]);
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(where + ": invalid JSON (" + e.what() + ")");
    }
    if (!object.is_object()) throw std::runtime_error(where + ": expected a JSON object");
    const auto text = object.find("text");
    if (text == object.end()) throw std::runtime_error(where + ": missing \"text\"");
    if (!text->is_string()) throw std::runtime_error(where + ": \"text\" must be a string");
    Document doc{optional_string(object, "id", where), optional_string(object, "category", where),
                 text->get<std::string>()};
    if (doc.id.empty()) doc.id = "line " + std::to_string(i + 1);
    if (doc.category.empty()) doc.category = "default";
    if (!ids.insert(doc.id).second) throw std::runtime_error(where + ": duplicate id '" + doc.id + "'");
    corpus.docs.push_back(std::move(doc));
  }
  require_text(corpus, path);
  return corpus;
}

Corpus load_corpus(const DataConfig& cfg) {
  Corpus corpus;
  if (cfg.corpus == "brown") {
    corpus = load_brown(cfg.path);
  } else if (cfg.corpus == "text") {
    corpus = load_text_dir(cfg.path);
  } else if (cfg.corpus == "jsonl") {
    corpus = load_jsonl(cfg.path);
  } else {
    throw std::runtime_error("unknown corpus type '" + cfg.corpus + "' (expected brown, text or jsonl)");
  }
  if (cfg.categories.empty()) return corpus;

  std::set<std::string> known;
  for (const Document& doc : corpus.docs) known.insert(doc.category);
  for (const std::string& category : cfg.categories) {
    if (known.count(category)) continue;
    std::string list;
    for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
    throw std::runtime_error("unknown category '" + category + "' in data.categories; " +
                             corpus.name + " has: " + list);
  }
  const std::set<std::string> wanted(cfg.categories.begin(), cfg.categories.end());
  std::erase_if(corpus.docs, [&](const Document& d) { return !wanted.count(d.category); });
  require_text(corpus, corpus.name + " (categories filtered)");
  return corpus;
}

}  // namespace pcmoe::data
