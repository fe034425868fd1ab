#include "collab/recorder.h"

#include "collab/expert_host.h"
#include "common/sha256.h"
#include "model/params.h"
#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace pcmoe {
namespace {

constexpr char kRecMagic[8] = {'P', 'C', 'M', 'O', 'E', 'R', 'E', 'C'};
constexpr char kTruthMagic[8] = {'P', 'C', 'M', 'O', 'E', 'T', 'R', 'U'};
constexpr char kSentMagic[8] = {'P', 'C', 'M', 'O', 'E', 'S', 'N', 'T'};
constexpr uint32_t kVersion = 1;

template <class T>
void put(std::FILE* f, T v) {
  if (std::fwrite(&v, sizeof v, 1, f) != 1) throw std::runtime_error("recording: write failed (disk full?)");
}
void put_bytes(std::FILE* f, const void* p, size_t n) {
  if (n && std::fwrite(p, 1, n, f) != n) throw std::runtime_error("recording: write failed (disk full?)");
}

// Reads a whole file; the parsing below checks every length against what is left.
class FileReader {
 public:
  explicit FileReader(const std::string& path) : path_(path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot open '" + path + "': is this a run recorded with an audit section?");
    std::fseek(f, 0, SEEK_END);
    buf_.resize((size_t)std::ftell(f));
    std::fseek(f, 0, SEEK_SET);
    const size_t got = std::fread(buf_.data(), 1, buf_.size(), f);
    std::fclose(f);
    if (got != buf_.size()) throw std::runtime_error("cannot read '" + path + "'");
  }
  bool done() const { return pos_ == buf_.size(); }
  void bytes(void* out, size_t n) {
    if (n > buf_.size() - pos_) throw std::runtime_error("'" + path_ + "' is truncated or corrupt");
    std::memcpy(out, buf_.data() + pos_, n);
    pos_ += n;
  }
  template <class T>
  T get() {
    T v;
    bytes(&v, sizeof v);
    return v;
  }
  void magic(const char (&m)[8]) {
    char got[8];
    bytes(got, 8);
    if (std::memcmp(got, m, 8) != 0 || get<uint32_t>() != kVersion)
      throw std::runtime_error("'" + path_ + "' is not a pcmoe recording of this version");
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<char> buf_;
  size_t pos_ = 0;
};

}  // namespace

std::string run_fingerprint(const nlohmann::json& config) { return sha256_hex(config.dump()); }

bool recorded_round(const AuditConfig& audit, int64_t rounds, int64_t round) {
  if (!audit.enabled) return false;
  const int64_t every = audit.record_every > 0 ? audit.record_every : std::max<int64_t>(1, rounds / 4);
  return round % every == 0 || round == rounds - 1;
}

Recorder::Recorder(const std::string& dir, int observer, int n_parties, const std::string& fingerprint, Oracle oracle)
    : observer_(observer), oracle_(std::move(oracle)) {
  std::filesystem::create_directories(dir);
  rec_ = std::fopen((dir + "/recording.bin").c_str(), "wb");
  truth_ = std::fopen((dir + "/truth.bin").c_str(), "wb");
  if (!rec_ || !truth_) throw std::runtime_error("cannot write the recording in '" + dir + "'");
  put_bytes(rec_, kRecMagic, 8);
  put(rec_, kVersion);
  put(rec_, (uint32_t)observer);
  put(rec_, (uint32_t)n_parties);
  put(rec_, (uint32_t)fingerprint.size());
  put_bytes(rec_, fingerprint.data(), fingerprint.size());
  put_bytes(truth_, kTruthMagic, 8);
  put(truth_, kVersion);
}

Recorder::~Recorder() {
  if (rec_) std::fclose(rec_);
  if (truth_) std::fclose(truth_);
}

Tap Recorder::tap() {
  return [this](MsgKind kind, int from, int to, bool is_response, const Bytes& payload) {
    take(kind, from, to, is_response, payload);
  };
}

void Recorder::take(MsgKind kind, int from, int to, bool is_response, const Bytes& payload) {
  if (!recording_ || to != observer_) return;  // only what reaches the observer
  Held h{kind, is_response, from, payload, {}, is_expert_request(kind, is_response) && oracle_};
  // The truth now: the sender's model still holds the forward this request came from.
  if (h.has_truth) h.truth = oracle_(kind, from, payload);
  if (!holding_) return write(h);
  held_[is_response ? to : from].push_back(std::move(h));  // a response answers the observer's own turn
}

void Recorder::flush() {
  for (const auto& [party, records] : held_)
    for (const Held& h : records) write(h);
  held_.clear();
}

void Recorder::write(const Held& h) {
  put(rec_, (uint8_t)h.kind);
  put(rec_, (uint8_t)h.is_response);
  put(rec_, (uint16_t)0);
  put(rec_, (uint32_t)h.from);
  put(rec_, (int64_t)round_);
  put(rec_, (uint64_t)h.payload.size());
  put_bytes(rec_, h.payload.data(), h.payload.size());
  if (h.has_truth) {
    put(truth_, (uint64_t)n_records_);
    put(truth_, (uint32_t)(h.truth.size() / 3));
    put_bytes(truth_, h.truth.data(), h.truth.size() * sizeof(int32_t));
  }
  ++n_records_;
  bytes_ += h.payload.size();
}

bool is_expert_request(MsgKind kind, bool is_response) {
  return !is_response && (kind == MsgKind::kExpertForward || kind == MsgKind::kExpertBackward ||
                          kind == MsgKind::kExpertBackwardUnits);
}

SentTruthWriter::SentTruthWriter(const std::string& dir) {
  std::filesystem::create_directories(dir);
  f_ = std::fopen((dir + "/sent_truth.bin").c_str(), "wb");
  if (!f_) throw std::runtime_error("cannot write '" + dir + "/sent_truth.bin'");
  put_bytes(f_, kSentMagic, 8);
  put(f_, kVersion);
}

SentTruthWriter::~SentTruthWriter() {
  if (f_) std::fclose(f_);
}

void SentTruthWriter::add(int64_t round, MsgKind kind, const std::vector<int32_t>& truth) {
  put(f_, round);
  put(f_, (uint8_t)kind);
  put(f_, (uint32_t)(truth.size() / 3));
  put_bytes(f_, truth.data(), truth.size() * sizeof(int32_t));
  std::fflush(f_);
}

std::vector<int32_t> expert_call_truth(const Model& sender, const Bytes& request, int host, int n_parties) {
  const ModelConfig& cfg = sender.config();
  Reader r(request);
  const int layer = (int)r.u32();
  if (layer < 0 || layer >= cfg.n_layers || !cfg.is_moe(layer)) throw std::runtime_error("expert call truth: not an MoE layer");
  const MoeSaved& sv = sender.moe_saved(layer);
  const int N = sender.last_rows(), K = cfg.top_k;
  std::vector<int> token_of_row(N * K);
  for (int i = 0; i < N * K; ++i) token_of_row[sv.row[i]] = i / K;
  std::vector<int32_t> out;
  for (int e : hosted_experts(cfg.n_experts, host, n_parties))
    for (int g = sv.offsets[e]; g < sv.offsets[e + 1]; ++g) {
      const int n = token_of_row[g];
      out.insert(out.end(), {sender.last_inputs()[n], sender.last_targets()[n], n});
    }
  return out;
}

Recording read_recording(const std::string& dir) {
  Recording out;
  FileReader rec(dir + "/recording.bin");
  rec.magic(kRecMagic);
  out.observer = (int)rec.get<uint32_t>();
  out.n_parties = (int)rec.get<uint32_t>();
  const uint32_t hash_len = rec.get<uint32_t>();
  if (hash_len > 256) throw std::runtime_error("'" + rec.path() + "' is corrupt");
  out.fingerprint.resize(hash_len);
  rec.bytes(out.fingerprint.data(), hash_len);
  while (!rec.done()) {
    Record r;
    r.kind = static_cast<MsgKind>(rec.get<uint8_t>());
    r.is_response = rec.get<uint8_t>() != 0;
    rec.get<uint16_t>();
    r.from = (int)rec.get<uint32_t>();
    r.round = rec.get<int64_t>();
    const uint64_t n = rec.get<uint64_t>();
    if (n > (uint64_t)1 << 34) throw std::runtime_error("'" + rec.path() + "' is corrupt");
    r.payload.resize(n);
    rec.bytes(r.payload.data(), n);
    out.records.push_back(std::move(r));
  }
  FileReader truth(dir + "/truth.bin");
  truth.magic(kTruthMagic);
  while (!truth.done()) {
    const uint64_t index = truth.get<uint64_t>();
    const uint32_t rows = truth.get<uint32_t>();
    if (index >= out.records.size() || rows > (1u << 24)) throw std::runtime_error("'" + truth.path() + "' is corrupt");
    std::vector<int32_t>& t = out.records[index].truth;
    t.resize((size_t)rows * 3);
    truth.bytes(t.data(), t.size() * sizeof(int32_t));
  }
  return out;
}

void gather_deployed_recording(const std::string& run_dir) {
  namespace fs = std::filesystem;
  const fs::path run(run_dir), out = run / "audit";
  int n = 0;
  while (fs::exists(run / ("party" + std::to_string(n)) / "audit")) ++n;
  if (n == 0) throw std::runtime_error("'" + run_dir + "' has no recording (audit/recording.bin), nor parties' recordings "
                                       "(party<i>/audit/): train it with an \"audit\" section in the config (docs/audit.md)");
  auto party_dir = [&](int p) { return run / ("party" + std::to_string(p)) / "audit"; };
  int observer = -1;
  for (int p = 0; p < n; ++p)
    if (fs::exists(party_dir(p) / "recording.bin")) observer = p;
  if (observer < 0) throw std::runtime_error("no party of '" + run_dir + "' holds the observer's recording.bin");
  Recording rec = read_recording(party_dir(observer).string());
  if (rec.n_parties != n)
    throw std::runtime_error("the recording is of " + std::to_string(rec.n_parties) + " parties, '" + run_dir + "' holds " +
                             std::to_string(n));

  // Each sender's truths, in the order it sent them, joined to the observer's records in order.
  std::vector<std::vector<std::pair<int64_t, std::pair<MsgKind, std::vector<int32_t>>>>> sent(n);
  for (int p = 0; p < n; ++p) {
    if (p == observer) continue;
    FileReader f((party_dir(p) / "sent_truth.bin").string());
    f.magic(kSentMagic);
    while (!f.done()) {
      const int64_t round = f.get<int64_t>();
      const auto kind = static_cast<MsgKind>(f.get<uint8_t>());
      const uint32_t rows = f.get<uint32_t>();
      if (rows > (1u << 24)) throw std::runtime_error("'" + f.path() + "' is corrupt");
      std::vector<int32_t> t((size_t)rows * 3);
      f.bytes(t.data(), t.size() * sizeof(int32_t));
      sent[p].push_back({round, {kind, std::move(t)}});
    }
  }
  fs::create_directories(out);
  fs::copy_file(party_dir(observer) / "recording.bin", out / "recording.bin", fs::copy_options::overwrite_existing);
  std::FILE* truth = std::fopen((out / "truth.bin").c_str(), "wb");
  if (!truth) throw std::runtime_error("cannot write '" + (out / "truth.bin").string() + "'");
  std::vector<size_t> next(n, 0);
  try {
    put_bytes(truth, kTruthMagic, 8);
    put(truth, kVersion);
    for (size_t i = 0; i < rec.records.size(); ++i) {
      const Record& r = rec.records[i];
      if (!is_expert_request(r.kind, r.is_response)) continue;
      if (r.from < 0 || r.from >= n || r.from == observer || next[r.from] >= sent[r.from].size())
        throw std::runtime_error("the observer recorded more expert requests from party " + std::to_string(r.from) +
                                 " than that party's sent_truth.bin holds");
      const auto& [round, kt] = sent[r.from][next[r.from]++];
      const size_t rows = kt.second.size() / 3;
      if (round != r.round || kt.first != r.kind)
        throw std::runtime_error("party " + std::to_string(r.from) + "'s sent_truth.bin does not follow the observer's recording");
      put(truth, (uint64_t)i);
      put(truth, (uint32_t)rows);
      put_bytes(truth, kt.second.data(), kt.second.size() * sizeof(int32_t));
    }
  } catch (...) {
    std::fclose(truth);
    throw;
  }
  std::fclose(truth);
  for (int p = 0; p < n; ++p)
    if (p != observer && next[p] != sent[p].size())
      throw std::runtime_error("party " + std::to_string(p) + "'s sent_truth.bin holds requests the observer did not record");

  // The views: the observer's backbone and every shard, as saved at each recorded round's start.
  for (const fs::directory_entry& e : fs::directory_iterator(party_dir(observer))) {
    const std::string name = e.path().filename().string();
    if (name.rfind("backbone_r", 0) != 0) continue;
    const std::string round = name.substr(10);
    const RunConfig cfg = read_checkpoint_config(e.path().string());
    ParamSet whole(cfg.model, ParamSelection{}, /*with_grads=*/false);
    ParamSet backbone(cfg.model, backbone_selection(), false);
    load_checkpoint(e.path().string(), cfg.model, backbone, nullptr);
    whole.copy_values_from(backbone);
    for (int p = 0; p < n; ++p) {
      ParamSet shard(cfg.model, shard_selection(p, n), false);
      load_checkpoint((party_dir(p) / ("shard_r" + round)).string(), cfg.model, shard, nullptr);
      whole.copy_values_from(shard);
    }
    const std::string tokenizer = (fs::path(resolve_checkpoint(e.path().string())) / "tokenizer.model").string();
    save_checkpoint((out / ("view_r" + round)).string(), to_json(cfg), whole, nullptr, std::stoll(round),
                    fs::exists(tokenizer) ? tokenizer : "");
  }
}

}  // namespace pcmoe
