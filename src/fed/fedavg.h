// FedAvg of the full model with all parties and the server in one process, every byte between
// them through the Transport. A round: the server sends the global trainable state (fp32) to
// each party (MsgKind::kFedRound request); the party overwrites its model with it, trains
// `local_steps` AdamW steps on its own data (its AdamW state never leaves it), and answers with
// its token count and its update (local minus global) through its codec; the server decodes
// every update and adds their token-weighted mean to the global state. In cg-fedllm the
// downlink also carries the autoencoder and, with FAF, the uplink the party's autoencoder
// update, averaged the same way. In fedavg-lora the trainable state is the LoRA adapters only:
// every party holds the same frozen base (the shared start, not sent) and the adapters cross.
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collab/transport.h"
#include "fed/codec.h"
#include "fed/lora_model.h"
#include "fed/tgap.h"
#include "collab/fed_config.h"
#include "train/local_model.h"

namespace pcmoe::fed {

// The codec of a mode (its row's FedCodec, collab/fed_config.h) for updates of n floats; the
// autoencoder codec codes with `ae`.
std::unique_ptr<UpdateCodec> make_codec(const std::string& mode, size_t n, const FedConfig& fc,
                                        const BlockAutoencoder* ae);

// The largest message of a round over n trainable floats: the downlink (the global state, with
// cg-fedllm's autoencoder) or the uplink (token count, encoded update, FAF's autoencoder update).
size_t largest_round_message(const std::string& mode, size_t n, const FedConfig& fc, uint64_t seed);

// What a party's last round measured (the simulation reads it; it is not sent).
struct PartyRound {
  LossStats loss;         // last local step
  double grad_norm = 0;   // last local step, before clipping
  float lr = 0;
  int64_t tokens = 0;     // trained this round
  Fidelity fidelity;      // decode(encode(update)) against the update
  double faf_loss = 0;    // autoencoder loss on the party's blocks before its FAF steps
};

class FedParty {
 public:
  // fedavg-lora: `base` is the frozen shared start (gather() order of the full model).
  FedParty(const ModelConfig& mc, const TrainConfig& tc, const FedConfig& fc, const std::string& mode, int id,
           int local_steps, BatchFn data, const std::vector<float>& base = {});
  // One round: request = global state [+ autoencoder]; response = tokens (f64), encoded
  // update [+ autoencoder update].
  Bytes handle(const Bytes& request);
  // Planned bytes: the model (LocalModel's categories), the round's buffers, the codec's state
  // (with the autoencoder copy), the transport's request and response.
  nlohmann::json memory() const;
  const PartyRound& last() const { return last_; }
  int64_t rounds() const { return rounds_; }  // rounds handled so far
  size_t trainable_floats() const { return n_; }
  LocalModel& local();  // the full model (every mode but fedavg-lora)
  // This party's model with the trainable state `state` (n floats, gather() order) loaded: how
  // the global model is evaluated.
  Model& load(const float* state);
  const BlockAutoencoder* autoencoder() const { return ae_.get(); }  // cg-fedllm: this party's copy

 private:
  ParamSet& trainable() { return full_ ? full_->params : lora_->lora.params(); }
  AdamW& opt() { return full_ ? full_->opt : lora_->opt; }
  Model& model() { return full_ ? full_->model : lora_->model; }

  int id_, local_steps_;
  TrainConfig tc_;
  FedConfig fc_;
  std::unique_ptr<LocalModel> full_;  // every mode but fedavg-lora
  std::unique_ptr<LoraModel> lora_;   // fedavg-lora
  BatchFn data_;
  size_t n_;
  std::unique_ptr<BlockAutoencoder> ae_;  // cg-fedllm: this party's copy of the autoencoder
  std::unique_ptr<UpdateCodec> codec_;
  std::vector<float> global_, update_, decoded_;
  std::vector<int32_t> windows_;
  int64_t steps_ = 0;  // local steps so far (the lr schedule's position)
  int64_t rounds_ = 0;
  size_t largest_request_ = 0, largest_response_ = 0;
  PartyRound last_;
};

class FedServer {
 public:
  // `global` is the initial trainable state (gather() order); `ae` the (pre-trained)
  // autoencoder for cg-fedllm, else null. fc.server_optimizer picks plain averaging or FedAdam.
  FedServer(const FedConfig& fc, const std::string& mode, std::vector<float> global,
            std::unique_ptr<BlockAutoencoder> ae);
  Bytes request() const;                  // this round's downlink
  // One party's uplink; throws, adding nothing, unless its token count is finite and > 0 and
  // every decoded value finite.
  void add(const Bytes& response);
  const std::vector<float>& last_decoded() const { return decoded_; }  // the last add's update
  // Δ = the token-weighted mean of the added updates; "avg": global += Δ; "adam": FedAdam's step.
  void apply();
  const std::vector<float>& global() const { return global_; }
  const BlockAutoencoder* autoencoder() const { return ae_.get(); }
  size_t memory_bytes() const;

 private:
  FedConfig fc_;
  std::string mode_;
  std::vector<float> global_, decoded_, ae_update_;
  std::vector<float> adam_m_, adam_v_;  // FedAdam's moments (server_optimizer "adam")
  std::vector<double> sum_, ae_sum_;
  double tokens_ = 0;
  std::unique_ptr<BlockAutoencoder> ae_;
  std::unique_ptr<UpdateCodec> codec_;
};

// One round as the server `server_id` drives it over `transport`: the downlink to parties
// 0..n_parties-1 in order, each answer added as it comes (so the mean is summed in party order),
// then apply(). `on_update(p, update)` sees each party's update as the server decoded it.
void drive_round(FedServer& server, Transport& transport, int server_id, int n_parties,
                 const std::function<void(int, const std::vector<float>&)>& on_update = {});

class FedSession {
 public:
  // Parties 0..n-1 and the server (transport id n). data(p, step, windows) fills party p's batch
  // of its local step `step`. fedavg-lora: initial_global holds the adapters and `base` the
  // frozen full model every party starts from.
  FedSession(const ModelConfig& mc, const TrainConfig& tc, const FedConfig& fc, const std::string& mode,
             const std::vector<int>& local_steps, Transport& transport,
             const std::function<void(int party, int64_t step, int32_t* windows)>& data,
             std::vector<float> initial_global, std::unique_ptr<BlockAutoencoder> ae,
             const std::vector<float>& base = {});
  // One round; `on_update(p, update)` sees each party's update as the server decoded it (the
  // leakage audit's federated server).
  void round(const std::function<void(int, const std::vector<float>&)>& on_update = {});
  int n_parties() const { return (int)parties_.size(); }
  int server_id() const { return n_parties(); }
  FedParty& party(int p) { return *parties_[p]; }
  FedServer& server() { return server_; }

 private:
  Transport& transport_;
  std::vector<std::unique_ptr<FedParty>> parties_;
  FedServer server_;
};

}  // namespace pcmoe::fed
