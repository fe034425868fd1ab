#include "collab/expert_host.h"

#include <stdexcept>

namespace pcmoe {

std::vector<int> hosted_experts(int n_experts, int party, int n_parties) {
  std::vector<int> out;
  for (int e = party; e < n_experts; e += n_parties) out.push_back(e);
  return out;
}

ParamSelection shard_selection(int party, int n_parties) {
  ParamSelection sel;
  sel.backbone = false;
  sel.expert = [=](int, int e) { return host_of(e, n_parties) == party; };
  return sel;
}

ExpertHost::ExpertHost(const ModelConfig& cfg, const TrainConfig& tc, int party, int n_parties, int max_rows)
    : cfg_(cfg), party_(party), local_(hosted_experts(cfg.n_experts, party, n_parties)),
      shard_(cfg, shard_selection(party, n_parties)), compute_(cfg, shard_, max_rows), opt_(shard_, tc),
      forward_offsets_(cfg.n_layers) {
  shard_.init(tc.seed);
}

Bytes ExpertHost::handle(MsgKind kind, int from, const Bytes& request) {
  switch (kind) {
    case MsgKind::kExpertForward: return expert_call(true, request);
    case MsgKind::kExpertBackward: return expert_call(false, request);
    case MsgKind::kControl: return control(request);
    case MsgKind::kFedRound: break;  // federated baselines only: a PC-MoE host refuses it
  }
  throw std::runtime_error("party " + std::to_string(party_) + ": unknown message kind from party " + std::to_string(from));
}

Bytes ExpertHost::expert_call(bool forward, const Bytes& request) {
  const int C = cfg_.d_model;
  Reader r(request);
  const uint32_t layer = r.u32();
  if (layer >= (uint32_t)cfg_.n_layers || !cfg_.is_moe((int)layer))
    throw std::runtime_error("expert call for layer " + std::to_string(layer) + ", which is not an MoE layer");
  const uint32_t k = r.u32();
  if (k != local_.size())
    throw std::runtime_error("expert call names " + std::to_string(k) + " experts; this host holds " + std::to_string(local_.size()));
  // Offsets over all experts, with rows only for the hosted ones.
  std::vector<int> offsets(cfg_.n_experts + 1, 0);
  std::vector<int> rows(cfg_.n_experts, 0);
  for (int e : local_) rows[e] = (int)r.u32();
  for (int e = 0; e < cfg_.n_experts; ++e) {
    if (rows[e] < 0 || (int64_t)offsets[e] + rows[e] > compute_.max_rows())
      throw std::runtime_error("expert call carries more rows than a party's batch can route");
    offsets[e + 1] = offsets[e] + rows[e];
  }
  const size_t total = (size_t)offsets[cfg_.n_experts] * C;
  if (!forward && offsets != forward_offsets_[layer])
    throw std::runtime_error("backward call does not match the rows of the last forward of layer " + std::to_string(layer));
  rows_in_.resize(total);
  r.floats(rows_in_.data(), total);
  r.expect_end();
  Bytes reply(total * sizeof(float));  // the results go straight into the reply
  float* out = reinterpret_cast<float*>(reply.data());
  if (forward) {
    compute_.forward((int)layer, offsets.data(), rows_in_.data(), out);
    forward_offsets_[layer] = offsets;
  } else {
    compute_.backward((int)layer, offsets.data(), rows_in_.data(), out);
  }
  return reply;
}

Bytes ExpertHost::control(const Bytes& request) {
  Reader r(request);
  const auto op = static_cast<ControlOp>(r.u32());
  Writer w;
  switch (op) {
    case ControlOp::kBeginTurn:
      r.expect_end();
      shard_.zero_grads();
      break;
    case ControlOp::kGradSqSums:
      r.expect_end();
      for (double s : grad_sq_sums(shard_)) w.f64(s);
      break;
    case ControlOp::kApplyUpdate: {
      const float coef = r.f32(), lr = r.f32();
      r.expect_end();
      if (!(coef > 0 && coef <= 1) || !(lr >= 0))
        throw std::runtime_error("apply-update order with clip coefficient or lr out of range");
      scale_grads(shard_, coef);
      opt_.step(shard_, lr);
      break;
    }
    default:
      throw std::runtime_error("unknown control operation " + std::to_string((uint32_t)op));
  }
  return w.take();
}

}  // namespace pcmoe
