#include "collab/session.h"

#include <cmath>
#include <stdexcept>
#include <unordered_map>

#include "train/step.h"

namespace pcmoe {
namespace {
// Sends a control order to every host; each answers with nothing.
void order_all(Transport& transport, int p, int n, const Bytes& message) {
  for (int h = 0; h < n; ++h) {
    const Bytes reply = transport.call(p, h, MsgKind::kControl, message);
    Reader(reply).expect_end();
  }
}

// The windows of one micro-batch a party plans for: DP-SGD's largest, else train.batch_size.
int planned_batch(const TrainConfig& tc, int max_batch) { return max_batch > 0 ? max_batch : tc.batch_size; }
// The routed rows of one MoE layer in one micro-batch: what an expert backend plans for.
int planned_rows(const ModelConfig& cfg, const TrainConfig& tc, int max_batch) {
  return planned_batch(tc, max_batch) * cfg.seq_len * cfg.top_k;
}

Bytes begin_message(int64_t turn) {
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kBeginTurn));
  w.u64((uint64_t)turn);
  return w.take();
}
}  // namespace

CollabParty::CollabParty(const ModelConfig& cfg, const TrainConfig& tc, Transport& transport, int id_, int n,
                         int max_batch, const HostPrivacy& privacy, WireDtype wire, Exchange exchange,
                         Schedule schedule)
    : id(id_), backbone(cfg, backbone_selection()), optimizer(backbone, tc), experts(cfg, transport, id_, n, wire),
      weights(exchange == Exchange::kWeights
                  ? std::make_unique<WeightsExchange>(cfg, transport, id_, n, planned_rows(cfg, tc, max_batch),
                                                      privacy.per_unit, tc.grad_accum > 1 || privacy.per_unit, wire)
                  : nullptr),
      model(cfg, backbone, weights ? static_cast<ExpertBackend&>(*weights) : experts, planned_batch(tc, max_batch),
            privacy.per_unit),
      host(cfg, tc, id_, n, planned_rows(cfg, tc, max_batch), privacy, wire, exchange, schedule) {
  backbone.init(tc.seed);
}

nlohmann::json party_memory(const CollabParty& p, size_t transport_bytes) {
  const size_t bb = p.backbone.numel() * sizeof(float), sh = p.host.params().numel() * sizeof(float);
  const size_t owner_experts = p.weights ? p.weights->activation_bytes() : 0;
  const size_t slots = p.host.slot_gradient_bytes();
  nlohmann::json j = {{"parameters", bb + sh},
                      {"gradients", bb + sh + slots},
                      {"optimizer", p.optimizer.state_bytes() + p.host.optimizer().state_bytes()},
                      {"activations", p.model.activation_bytes() + p.host.activation_bytes() + owner_experts},
                      {"scratch", p.model.scratch_bytes() + p.host.scratch_bytes()},
                      {"transport", transport_bytes},
                      {"exchange", p.weights ? p.weights->exchange_bytes() : 0},
                      {"backbone_parameters", bb},
                      {"expert_parameters", sh},
                      {"host_slots", slots + (p.host.activation_bytes() + p.host.scratch_bytes()) /
                                                 p.host.slots() * (p.host.slots() - 1)}};
  size_t total = 0;
  for (const char* k : {"parameters", "gradients", "optimizer", "activations", "scratch", "transport", "exchange"})
    total += j[k].get<size_t>();
  j["total"] = total;
  return j;
}

TurnPlan::TurnPlan(const ModelConfig& cfg, int n_parties) {
  for (const ParamTensor& t : param_layout(cfg, ParamSelection{})) canonical.push_back(t.name);
  for (int h = 0; h < n_parties; ++h) {
    std::vector<std::string> names;
    for (const ParamTensor& t : param_layout(cfg, shard_selection(h, n_parties))) names.push_back(t.name);
    host_tensors.push_back(std::move(names));
  }
}

PcMoeSession::PcMoeSession(const ModelConfig& cfg, const TrainConfig& tc, int n_parties, Transport& transport,
                           int max_batch, const HostPrivacy& privacy, WireDtype wire, Exchange exchange,
                           Schedule schedule)
    : tc_(tc), schedule_(schedule), transport_(transport), plan_(cfg, n_parties) {
  if (n_parties < 1 || n_parties > cfg.n_experts)
    throw std::runtime_error("need 1 <= parties <= n_experts (" + std::to_string(cfg.n_experts) + "), got " +
                             std::to_string(n_parties));
  for (int p = 0; p < n_parties; ++p) {
    parties_.push_back(
        std::make_unique<CollabParty>(cfg, tc, transport, p, n_parties, max_batch, privacy, wire, exchange, schedule));
    ExpertHost* host = &parties_.back()->host;
    transport.serve(p, [host](MsgKind kind, int from, const Bytes& req) { return host->handle(kind, from, req); });
  }
}

void PcMoeSession::start_at(int64_t turn) {
  for (auto& p : parties_) p->host.start_at((uint64_t)turn);
}

DpTurnResult run_dp_turn(CollabParty& me, Transport& transport, const TrainConfig& tc, const TurnPlan& plan,
                         int64_t turn, const PrivacyUnits& units, const DpPlan& dp, const std::vector<int>& sampled,
                         uint64_t noise_stream) {
  const int p = me.id, n = (int)plan.host_tensors.size();
  order_all(transport, p, n, begin_message(turn));
  me.backbone.zero_grads();
  if (me.weights) me.weights->begin_turn();
  DpTurnResult r;
  r.batch = accumulate_clipped(me.model, units, sampled, dp);
  r.turn.loss = r.batch.loss;
  r.turn.grad_norm = r.batch.mean_norm;
  r.turn.lr = learning_rate(tc, me.turns);
  NoiseSource noise = noise_for(dp, noise_stream * 1024 + 1023);  // hosts use ids 0..1022
  privatise_gradients(me.backbone, noise, dp);
  if (me.weights) me.weights->send_held_grads(&noise, dp.noise_std());
  me.optimizer.step(me.backbone, r.turn.lr);
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kApplyNoisyUpdate));
  w.f32(me.weights ? 0.0f : (float)dp.noise_std());  // exchanging weights, the sums left noised
  w.f32(dp.average_scale());
  w.f32(r.turn.lr * me.expert_lr_scale);
  w.u64(noise_stream);
  order_all(transport, p, n, w.take());
  ++me.turns;
  return r;
}

TurnResult run_turn(CollabParty& me, Transport& transport, const TrainConfig& tc, const TurnPlan& plan, int64_t turn,
                    const int32_t* windows) {
  const int p = me.id, n = (int)plan.host_tensors.size();
  order_all(transport, p, n, begin_message(turn));
  if (me.weights) me.weights->begin_turn();
  TurnResult r;
  r.loss = accumulate_gradients(me.model, me.backbone, windows, tc.batch_size, tc.grad_accum);
  if (me.weights) me.weights->send_held_grads(nullptr, 0);

  // The global gradient norm, with the tensors' sums added in the full model's order.
  std::unordered_map<std::string, double> sums;
  const std::vector<double> own = grad_sq_sums(me.backbone);
  for (size_t i = 0; i < own.size(); ++i) sums[me.backbone.tensors()[i].name] = own[i];
  Writer ask;
  ask.u32(static_cast<uint32_t>(ControlOp::kGradSqSums));
  const Bytes sums_message = ask.take();
  for (int h = 0; h < n; ++h) {
    const Bytes reply = transport.call(p, h, MsgKind::kControl, sums_message);
    Reader rd(reply);
    for (const std::string& name : plan.host_tensors[h]) {
      const double v = rd.f64();
      if (!(v >= 0) || !std::isfinite(v))
        throw std::runtime_error("party " + std::to_string(h) + " answered the gradient sum of " + name + " with " +
                                 std::to_string(v) + ": must be finite and >= 0");
      sums[name] = v;
    }
    rd.expect_end();
  }
  double total = 0;
  for (const std::string& name : plan.canonical) total += sums.at(name);
  r.grad_norm = std::sqrt(total);
  const float coef = clip_coefficient(r.grad_norm, tc.grad_clip);
  r.lr = learning_rate(tc, me.turns);

  scale_grads(me.backbone, coef);
  me.optimizer.step(me.backbone, r.lr);
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kApplyUpdate));
  w.f32(coef);
  w.f32(r.lr * me.expert_lr_scale);
  order_all(transport, p, n, w.take());
  ++me.turns;
  return r;
}

}  // namespace pcmoe
