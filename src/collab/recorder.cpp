#include "collab/recorder.h"

#include "collab/expert_host.h"
#include "common/sha256.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace pcmoe {
namespace {

constexpr char kRecMagic[8] = {'P', 'C', 'M', 'O', 'E', 'R', 'E', 'C'};
constexpr char kTruthMagic[8] = {'P', 'C', 'M', 'O', 'E', 'T', 'R', 'U'};
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
  put(rec_, (uint8_t)kind);
  put(rec_, (uint8_t)is_response);
  put(rec_, (uint16_t)0);
  put(rec_, (uint32_t)from);
  put(rec_, (int64_t)round_);
  put(rec_, (uint64_t)payload.size());
  put_bytes(rec_, payload.data(), payload.size());
  const bool expert_request = !is_response && (kind == MsgKind::kExpertForward || kind == MsgKind::kExpertBackward ||
                                               kind == MsgKind::kExpertBackwardUnits);
  if (expert_request && oracle_) {
    const std::vector<int32_t> truth = oracle_(kind, from, payload);
    put(truth_, (uint64_t)n_records_);
    put(truth_, (uint32_t)(truth.size() / 3));
    put_bytes(truth_, truth.data(), truth.size() * sizeof(int32_t));
  }
  ++n_records_;
  bytes_ += payload.size();
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

}  // namespace pcmoe
