#include "fed/fedavg.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "tensor/rng.h"
#include "train/step.h"

namespace pcmoe::fed {
namespace {

void append(Bytes& out, const Bytes& part) { out.insert(out.end(), part.begin(), part.end()); }

Bytes slice(const Bytes& b, size_t from, size_t len) {
  if (from + len > b.size())
    throw std::runtime_error("federated message has " + std::to_string(b.size()) + " bytes, needs " +
                             std::to_string(from + len));
  return Bytes(b.begin() + from, b.begin() + from + len);
}

bool faf(const std::string& mode, const FedConfig& fc) {
  return fed_mode(mode).codec == FedCodec::autoencoder && fc.faf_steps > 0;
}

}  // namespace

std::unique_ptr<UpdateCodec> make_codec(const std::string& mode, size_t n, const FedConfig& fc,
                                        const BlockAutoencoder* ae) {
  switch (fed_mode(mode).codec) {
    case FedCodec::fp32: return std::make_unique<Fp32Codec>();
    case FedCodec::int8: return std::make_unique<Int8Codec>(fc.block_size);
    case FedCodec::topk_ef: return std::make_unique<TopKCodec>(n, matched_topk(n, fc.block_size, fc.latent()));
    case FedCodec::autoencoder:
      if (!ae) throw std::logic_error("the autoencoder codec (" + mode + ") needs an autoencoder");
      return std::make_unique<AutoencoderCodec>(*ae);
  }
  throw std::logic_error("a federated mode's codec has no factory");
}

size_t largest_round_message(const std::string& mode, size_t n, const FedConfig& fc, uint64_t seed) {
  std::unique_ptr<BlockAutoencoder> ae;
  if (fed_mode(mode).codec == FedCodec::autoencoder)
    ae = std::make_unique<BlockAutoencoder>(fc.block_size, fc.latent(), seed);
  const size_t ae_n = ae ? ae->numel() : 0;
  const size_t down = 4 * (n + ae_n);
  const size_t up = 8 + make_codec(mode, n, fc, ae.get())->encoded_bytes(n) + (faf(mode, fc) ? 4 * ae_n : 0);
  return std::max(down, up);
}

FedParty::FedParty(const ModelConfig& mc, const TrainConfig& tc, const FedConfig& fc, const std::string& mode, int id,
                   int local_steps, BatchFn data, const std::vector<float>& base)
    : id_(id), local_steps_(local_steps), tc_(tc), fc_(fc),
      full_(fed_mode(mode).lora ? nullptr : std::make_unique<LocalModel>(mc, tc)),
      lora_(fed_mode(mode).lora ? std::make_unique<LoraModel>(mc, tc, fc.lora) : nullptr), data_(std::move(data)),
      n_(trainable_numel(trainable())), global_(n_), update_(n_), decoded_(n_),
      windows_((size_t)tc.grad_accum * tc.batch_size * (mc.seq_len + 1)) {
  if (lora_) {
    if (base.size() != trainable_numel(lora_->base))
      throw std::logic_error(mode + " needs the frozen base model of every party");
    scatter(base.data(), lora_->base);
  }
  if (fed_mode(mode).codec == FedCodec::autoencoder)
    ae_ = std::make_unique<BlockAutoencoder>(fc.block_size, fc.latent(), tc.seed);
  codec_ = make_codec(mode, n_, fc, ae_.get());
}

Bytes FedParty::handle(const Bytes& request) {
  const size_t ae_n = ae_ ? ae_->numel() : 0;
  if (request.size() != 4 * (n_ + ae_n))
    throw std::runtime_error("party " + std::to_string(id_) + ": round request has " + std::to_string(request.size()) +
                             " bytes, expected " + std::to_string(4 * (n_ + ae_n)));
  Reader rd(request);
  rd.floats(global_.data(), n_);
  if (ae_) rd.floats(ae_->params(), ae_n);
  scatter(global_.data(), trainable());

  last_ = PartyRound{};
  for (int s = 0; s < local_steps_; ++s, ++steps_) {
    data_(steps_, windows_.data());
    last_.loss = accumulate_gradients(model(), trainable(), windows_.data(), tc_.batch_size, tc_.grad_accum);
    const UpdateStats u = apply_update(trainable(), opt(), tc_, steps_);
    last_.grad_norm = u.grad_norm;
    last_.lr = u.lr;
    last_.tokens += (int64_t)tc_.grad_accum * tc_.batch_size * model().config().seq_len;
  }
  gather(trainable(), update_.data());
  for (size_t i = 0; i < n_; ++i) update_[i] -= global_[i];

  Writer head;
  head.f64((double)last_.tokens);
  Bytes response = head.take();
  const Bytes code = codec_->encode(update_.data(), n_);
  codec_->decode(code, decoded_.data(), n_);
  last_.fidelity = fidelity(update_.data(), decoded_.data(), n_);
  append(response, code);
  if (ae_ && fc_.faf_steps > 0) {
    // FAF: the autoencoder learns from this party's own update, then its change goes up.
    std::vector<float> before(ae_->params(), ae_->params() + ae_n);
    BlockSet set{fc_.block_size, {}};
    sample_blocks(update_.data(), n_, fc_.faf_steps * fc_.ae_batch,
                  splitmix64(tc_.seed ^ ((uint64_t)id_ << 32) ^ (uint64_t)rounds_), set);
    last_.faf_loss = reconstruction_loss(*ae_, set);
    train_autoencoder(*ae_, set, 1, fc_.ae_batch, fc_.ae_lr, tc_.seed + rounds_);
    for (size_t i = 0; i < ae_n; ++i) before[i] = ae_->params()[i] - before[i];
    Writer w;
    w.floats(before.data(), ae_n);
    append(response, w.take());
  }
  ++rounds_;
  largest_request_ = std::max(largest_request_, request.size());
  largest_response_ = std::max(largest_response_, response.size());
  return response;
}

LocalModel& FedParty::local() {
  if (!full_) throw std::logic_error("a fedavg-lora party holds no full trainable model");
  return *full_;
}

Model& FedParty::load(const float* state) {
  scatter(state, trainable());
  return model();
}

nlohmann::json FedParty::memory() const {
  nlohmann::json j = full_ ? full_->memory() : lora_->memory();
  j["round_buffers"] = (global_.size() + update_.size() + decoded_.size()) * sizeof(float) + windows_.size() * 4;
  j["codec"] = codec_->state_bytes() + (ae_ ? ae_->bytes() : 0);
  j["transport"] = largest_request_ + largest_response_;
  size_t total = 0;
  for (const char* k : {"parameters", "gradients", "optimizer", "activations", "scratch", "transport", "round_buffers", "codec"})
    total += j[k].get<size_t>();
  j["total"] = total;
  return j;
}

FedServer::FedServer(const FedConfig& fc, const std::string& mode, std::vector<float> global,
                     std::unique_ptr<BlockAutoencoder> ae)
    : fc_(fc), mode_(mode), global_(std::move(global)), decoded_(global_.size()), sum_(global_.size()),
      ae_(std::move(ae)) {
  codec_ = make_codec(mode, global_.size(), fc, ae_.get());
  if (ae_) {
    ae_update_.resize(ae_->numel());
    ae_sum_.resize(ae_->numel());
  }
  if (fc.server_optimizer == "adam") {
    adam_m_.assign(global_.size(), 0.0f);
    adam_v_.assign(global_.size(), 0.0f);
  }
}

Bytes FedServer::request() const {
  Writer w;
  w.floats(global_.data(), global_.size());
  if (ae_) w.floats(ae_->params(), ae_->numel());
  return w.take();
}

void FedServer::add(const Bytes& response) {
  const size_t n = global_.size(), code_bytes = codec_->encoded_bytes(n);
  const size_t ae_bytes = faf(mode_, fc_) ? 4 * ae_->numel() : 0;
  if (response.size() != 8 + code_bytes + ae_bytes)
    throw std::runtime_error("party update has " + std::to_string(response.size()) + " bytes, expected " +
                             std::to_string(8 + code_bytes + ae_bytes));
  Reader head(response);
  const double t = head.f64();
  if (!(t > 0) || !std::isfinite(t))
    throw std::runtime_error("party update weighs " + std::to_string(t) + " tokens: must be finite and > 0");
  // Everything is read and checked before anything is added: a refused update leaves the sums.
  codec_->decode(slice(response, 8, code_bytes), decoded_.data(), n);
  if (ae_bytes) {
    const Bytes tail = slice(response, 8 + code_bytes, ae_bytes);
    Reader r(tail);
    r.floats(ae_update_.data(), ae_update_.size());
  }
  const auto finite = [](const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
  };
  if (!finite(decoded_) || (ae_bytes && !finite(ae_update_)))
    throw std::runtime_error("party update holds a value that is not finite");
  for (size_t i = 0; i < n; ++i) sum_[i] += t * decoded_[i];
  if (ae_bytes)
    for (size_t i = 0; i < ae_update_.size(); ++i) ae_sum_[i] += t * ae_update_[i];
  tokens_ += t;
}

void FedServer::apply() {
  if (tokens_ <= 0) throw std::logic_error("a federated round without updates");
  if (adam_m_.empty()) {
    for (size_t i = 0; i < global_.size(); ++i) {
      global_[i] += (float)(sum_[i] / tokens_);
      sum_[i] = 0;
    }
  } else {  // FedAdam (Reddi et al., arXiv 2003.00295, Algorithm 2; no bias correction)
    const float b1 = fc_.server_beta1, b2 = fc_.server_beta2;
    for (size_t i = 0; i < global_.size(); ++i) {
      const float d = (float)(sum_[i] / tokens_);
      adam_m_[i] = b1 * adam_m_[i] + (1 - b1) * d;
      adam_v_[i] = b2 * adam_v_[i] + (1 - b2) * d * d;
      global_[i] += fc_.server_lr * adam_m_[i] / (std::sqrt(adam_v_[i]) + fc_.server_tau);
      sum_[i] = 0;
    }
  }
  for (size_t i = 0; i < ae_sum_.size(); ++i) {
    ae_->params()[i] += (float)(ae_sum_[i] / tokens_);
    ae_sum_[i] = 0;
  }
  tokens_ = 0;
}

size_t FedServer::memory_bytes() const {
  return (global_.size() + decoded_.size() + ae_update_.size() + adam_m_.size() + adam_v_.size()) * sizeof(float) +
         (sum_.size() + ae_sum_.size()) * sizeof(double) + codec_->state_bytes() + (ae_ ? ae_->bytes() : 0);
}

FedSession::FedSession(const ModelConfig& mc, const TrainConfig& tc, const FedConfig& fc, const std::string& mode,
                       const std::vector<int>& local_steps, Transport& transport,
                       const std::function<void(int, int64_t, int32_t*)>& data, std::vector<float> initial_global,
                       std::unique_ptr<BlockAutoencoder> ae, const std::vector<float>& base)
    : transport_(transport), server_(fc, mode, std::move(initial_global), std::move(ae)) {
  for (int p = 0; p < (int)local_steps.size(); ++p) {
    parties_.push_back(std::make_unique<FedParty>(
        mc, tc, fc, mode, p, local_steps[p], [data, p](int64_t step, int32_t* w) { data(p, step, w); }, base));
    FedParty* party = parties_.back().get();
    transport.serve(p, [party](MsgKind kind, int, const Bytes& req) {
      if (kind != MsgKind::kFedRound) throw std::runtime_error("a federated party only answers fed_round messages");
      return party->handle(req);
    });
  }
  transport.serve(server_id(), [](MsgKind, int, const Bytes&) -> Bytes {
    throw std::runtime_error("the federated server takes no calls");
  });
}

void drive_round(FedServer& server, Transport& transport, int server_id, int n_parties,
                 const std::function<void(int, const std::vector<float>&)>& on_update) {
  const Bytes req = server.request();
  for (int p = 0; p < n_parties; ++p) {
    server.add(transport.call(server_id, p, MsgKind::kFedRound, req));
    if (on_update) on_update(p, server.last_decoded());
  }
  server.apply();
}

void FedSession::round(const std::function<void(int, const std::vector<float>&)>& on_update) {
  drive_round(server_, transport_, server_id(), n_parties(), on_update);
}

}  // namespace pcmoe::fed
