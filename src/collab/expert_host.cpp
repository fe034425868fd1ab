#include "collab/expert_host.h"

#include <cmath>
#include <cstring>
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

ExpertHost::ExpertHost(const ModelConfig& cfg, const TrainConfig& tc, int party, int n_parties, int max_rows,
                       const HostPrivacy& privacy, WireDtype wire)
    : cfg_(cfg), party_(party), wire_(wire), local_(hosted_experts(cfg.n_experts, party, n_parties)),
      shard_(cfg, shard_selection(party, n_parties)), compute_(cfg, shard_, max_rows, privacy.per_unit),
      opt_(shard_, tc), forward_offsets_(cfg.n_layers), privacy_(privacy), n_units_(cfg.n_layers, 0) {
  shard_.init(tc.seed);
}

Bytes ExpertHost::handle(MsgKind kind, int from, const Bytes& request) {
  switch (kind) {
    case MsgKind::kExpertForward: return expert_call(Call::kForward, kind, request);
    case MsgKind::kExpertBackward: return expert_call(Call::kBackward, kind, request);
    case MsgKind::kExpertBackwardUnits:
      if (!privacy_.per_unit) break;
      return expert_call(Call::kBackwardUnits, kind, request);
    case MsgKind::kControl: return control(request);
    case MsgKind::kFedRound:
    case MsgKind::kFedGlobal: break;  // federated baselines only: a PC-MoE host refuses them
  }
  throw std::runtime_error("party " + std::to_string(party_) + ": unexpected message kind " + to_string(kind) +
                           " from party " + std::to_string(from));
}

Bytes ExpertHost::expert_call(Call call, MsgKind kind, const Bytes& request) {
  const int C = cfg_.d_model;
  decode_expert_request(kind, request, cfg_, local_, compute_.max_rows(), in_, wire_);
  const int layer = in_.layer;
  const std::vector<int>& offsets = in_.offsets;
  const size_t total = (size_t)in_.n_rows() * C;
  if (call != Call::kForward && offsets != forward_offsets_[layer])
    throw std::runtime_error("backward call does not match the rows of the last forward of layer " + std::to_string(layer));
  out_.resize(total);
  std::vector<double> sq((size_t)in_.n_units, 0.0);
  switch (call) {
    case Call::kForward: compute_.forward(layer, offsets.data(), in_.rows.data(), out_.data()); break;
    case Call::kBackward: compute_.backward(layer, offsets.data(), in_.rows.data(), out_.data()); break;
    case Call::kBackwardUnits:
      compute_.backward_unit_norms(layer, offsets.data(), in_.rows.data(), in_.units.data(), in_.n_units, out_.data(),
                                   sq.data());
      break;
  }
  // A reply that cannot be encoded (fp16 overflow) fails the call and stops the run; the forward
  // is recorded only once its reply exists.
  Bytes reply = encode_expert_reply(out_.data(), total, sq.data(), in_.n_units, wire_);
  if (call == Call::kForward) {
    forward_offsets_[layer] = offsets;
    n_units_[layer] = 0;
  } else if (call == Call::kBackwardUnits) {
    n_units_[layer] = in_.n_units;
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
    case ControlOp::kClipFactors: {
      const uint32_t layer = r.u32(), n_units = r.u32();
      if (!privacy_.per_unit || layer >= (uint32_t)cfg_.n_layers || n_units_[layer] == 0 ||
          n_units != (uint32_t)n_units_[layer])
        throw std::runtime_error("clip factors for layer " + std::to_string(layer) +
                                 " do not follow a per-unit backward of that layer");
      std::vector<float> factor(n_units);
      r.floats(factor.data(), n_units);
      r.expect_end();
      for (float f : factor)
        if (!(f >= 0 && f <= 1)) throw std::runtime_error("clip factor outside [0, 1]");
      compute_.add_clipped_grads((int)layer, factor.data());
      n_units_[layer] = 0;  // each pass 1 is clipped once
      break;
    }
    case ControlOp::kApplyNoisyUpdate: {
      const float std = r.f32(), scale = r.f32(), lr = r.f32();
      const uint64_t stream = r.u64();
      r.expect_end();
      if (!privacy_.per_unit || !(std >= 0) || !(scale > 0) || !(lr >= 0) || !std::isfinite(std) || !std::isfinite(scale))
        throw std::runtime_error("noisy-update order out of range");
      add_noise(std, stream);
      scale_grads(shard_, scale);
      opt_.step(shard_, lr);
      break;
    }
    default:
      throw std::runtime_error("unknown control operation " + std::to_string((uint32_t)op));
  }
  return w.take();
}

void ExpertHost::add_noise(float std, uint64_t stream) {
  if (privacy_.seeded) {
    // The stream names (party, turn); the host id keeps hosts' noise apart.
    NoiseSource src = NoiseSource::seeded(privacy_.test_seed, stream * 1024 + (uint64_t)party_);
    add_gaussian_noise(shard_, src, std);
    return;
  }
  if (!noise_) noise_ = std::make_unique<NoiseSource>(NoiseSource::secure());
  add_gaussian_noise(shard_, *noise_, std);
}

}  // namespace pcmoe
