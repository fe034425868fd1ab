#include "collab/expert_host.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "collab/schedule.h"

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
                       const HostPrivacy& privacy, WireDtype wire, Exchange exchange)
    : cfg_(cfg), party_(party), n_parties_(n_parties), seed_(tc.seed), wire_(wire), exchange_(exchange),
      local_(hosted_experts(cfg.n_experts, party, n_parties)), shard_(cfg, shard_selection(party, n_parties)),
      // a weights-exchange host runs no expert: its owners do
      compute_(cfg, shard_, exchange == Exchange::kWeights ? 0 : max_rows, privacy.per_unit,
               /*keep_inputs=*/wire != WireDtype::kF32),
      opt_(shard_, tc), layers_(cfg.n_layers), privacy_(privacy) {
  shard_.init(tc.seed);
  if (exchange == Exchange::kWeights) {
    grad_in_.resize(expert_floats(cfg));
    grads_seen_.assign((size_t)cfg.n_layers * local_.size(), 0);
  } else if (wire != WireDtype::kF32) {
    // An fp32 reply always encodes; a narrower one fails on overflow after its backward has added
    // the gradients, which undo_ then restores (keep_inputs keeps the forward that backward used).
    undo_.resize(local_.size() * 3 * (size_t)cfg.d_model * cfg.d_ff);
  }
}

void ExpertHost::start_at(uint64_t turn) {
  turn_ = turn;
  holder_ = -1;
  summed_ = false;
  for (Layer& l : layers_) l.stage = Stage::kIdle;
  std::fill(grads_seen_.begin(), grads_seen_.end(), 0);
}

void ExpertHost::end_turn() {
  holder_ = -1;
  summed_ = false;
  ++turn_;
}

Bytes ExpertHost::handle(MsgKind kind, int from, const Bytes& request) {
  try {
    return serve(kind, from, request);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("party " + std::to_string(party_) + " refused " + to_string(kind) + " from party " +
                             std::to_string(from) + ": " + e.what());
  }
}

Bytes ExpertHost::serve(MsgKind kind, int from, const Bytes& request) {
  if (from < 0 || from >= n_parties_)
    throw std::runtime_error("the run's parties are 0.." + std::to_string(n_parties_ - 1));
  const bool weights_kind = kind == MsgKind::kExpertWeights || kind == MsgKind::kExpertGrads;
  const bool activations_kind = kind == MsgKind::kExpertForward || kind == MsgKind::kExpertBackward ||
                                kind == MsgKind::kExpertBackwardUnits;
  if (exchange_ == Exchange::kWeights && activations_kind)
    throw std::runtime_error("this run exchanges weights (collab.exchange \"weights\"): its hosts take no hidden "
                             "state or output gradient");
  if (exchange_ == Exchange::kActivations && weights_kind)
    throw std::runtime_error("this run exchanges activations (collab.exchange \"activations\"): its hosts hand out "
                             "no weights and take no gradient sums");
  switch (kind) {
    case MsgKind::kExpertForward: return expert_call(Call::kForward, kind, from, request);
    case MsgKind::kExpertBackward: return expert_call(Call::kBackward, kind, from, request);
    case MsgKind::kExpertBackwardUnits:
      if (!privacy_.per_unit) throw std::runtime_error("this host is not set up for DP-SGD's per-unit calls");
      return expert_call(Call::kBackwardUnits, kind, from, request);
    case MsgKind::kControl: return control(from, request);
    case MsgKind::kExpertWeights:
    case MsgKind::kExpertGrads: return weights_call(kind, from, request);
    case MsgKind::kFedRound:
    case MsgKind::kFedGlobal: break;  // federated baselines only
  }
  throw std::runtime_error("a PC-MoE host serves no such call");
}

void ExpertHost::require_turn(int from, const std::string& what, bool gradients_open) const {
  if (holder_ < 0)
    throw std::runtime_error(what + " outside a turn (turn " + std::to_string(turn_) + " has not begun)");
  if (from != holder_)
    throw std::runtime_error(what + " during turn " + std::to_string(turn_) + ", which is party " +
                             std::to_string(holder_) + "'s");
  if (gradients_open && summed_)
    throw std::runtime_error(what + " after the gradient norms of turn " + std::to_string(turn_) +
                             " were taken (only its update may follow)");
}

void ExpertHost::require_layers_idle(const std::string& what) const {
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (layers_[l].stage != Stage::kIdle)
      throw std::runtime_error(what + " while layer " + std::to_string(l) + "'s " +
                               (layers_[l].stage == Stage::kForwarded ? "forward awaits its backward"
                                                                      : "per-unit backward awaits its clip factors"));
}

void ExpertHost::keep_grads(int layer, bool restore) {
  float* at = undo_.data();
  for (int e : local_)
    for (const char* w : {"w1", "w3", "w2"}) {
      const ParamTensor& t = shard_.info(expert_param(layer, e, w));
      float* g = shard_.grads() + t.offset;
      if (restore) std::copy_n(at, t.numel, g);
      else std::copy_n(g, t.numel, at);
      at += t.numel;
    }
}

Bytes ExpertHost::expert_call(Call call, MsgKind kind, int from, const Bytes& request) {
  // With no turn open a forward is an evaluation: any party's, kept for no backward.
  const bool evaluation = call == Call::kForward && holder_ < 0;
  if (!evaluation) require_turn(from, to_string(kind), true);
  decode_expert_request(kind, request, cfg_, local_, compute_.max_rows(), in_, wire_);
  const int layer = in_.layer;
  const std::vector<int>& offsets = in_.offsets;
  Layer& st = layers_[layer];
  if (call == Call::kForward && !evaluation && st.stage != Stage::kIdle)
    throw std::runtime_error("a forward of layer " + std::to_string(layer) + " before the backward of its last one");
  if (call != Call::kForward && st.stage != Stage::kForwarded)
    throw std::runtime_error("a backward of layer " + std::to_string(layer) + " with no forward awaiting it");
  if (call != Call::kForward && offsets != st.offsets)
    throw std::runtime_error("backward call does not match the rows of the last forward of layer " + std::to_string(layer));
  const size_t total = (size_t)in_.n_rows() * cfg_.d_model;
  out_.resize(total);
  std::vector<double> sq((size_t)in_.n_units, 0.0);
  const bool undo = call == Call::kBackward && !undo_.empty();
  if (undo) keep_grads(layer, false);
  switch (call) {
    case Call::kForward: compute_.forward(layer, offsets.data(), in_.rows.data(), out_.data()); break;
    case Call::kBackward: compute_.backward(layer, offsets.data(), in_.rows.data(), out_.data()); break;
    case Call::kBackwardUnits:
      compute_.backward_unit_norms(layer, offsets.data(), in_.rows.data(), in_.units.data(), in_.n_units, out_.data(),
                                   sq.data());
      break;
  }
  // A reply that cannot be encoded (fp16 overflow) fails the call: the layer keeps its stage (a
  // forward's saved rows are used by no backward) and a backward's gradients are restored.
  Bytes reply;
  try {
    reply = encode_expert_reply(out_.data(), total, sq.data(), in_.n_units, wire_);
  } catch (const std::runtime_error&) {
    if (undo) keep_grads(layer, true);
    throw;
  }
  if (evaluation) return reply;
  switch (call) {
    case Call::kForward:
      st.stage = Stage::kForwarded;
      st.offsets = offsets;
      break;
    case Call::kBackward: st.stage = Stage::kIdle; break;
    case Call::kBackwardUnits:
      st.stage = Stage::kUnits;
      st.n_units = in_.n_units;
      break;
  }
  return reply;
}

namespace {
bool finite_at_least(float v, float low) { return std::isfinite(v) && v >= low; }
}  // namespace

Bytes ExpertHost::control(int from, const Bytes& request) {
  Reader r(request);
  const auto op = static_cast<ControlOp>(r.u32());
  Writer w;
  switch (op) {
    case ControlOp::kBeginTurn: {
      const uint64_t turn = r.u64();
      r.expect_end();
      if (holder_ >= 0)
        throw std::runtime_error("begin of turn " + std::to_string(turn) + " while turn " + std::to_string(turn_) +
                                 " (party " + std::to_string(holder_) + "'s) is open");
      if (turn != turn_)
        throw std::runtime_error("begin of turn " + std::to_string(turn) + ", but turn " + std::to_string(turn_) +
                                 " is next");
      if (const int h = turn_holder(seed_, n_parties_, (int64_t)turn); h != from)
        throw std::runtime_error("begin of turn " + std::to_string(turn) + ", which is party " + std::to_string(h) + "'s");
      shard_.zero_grads();
      std::fill(grads_seen_.begin(), grads_seen_.end(), 0);
      holder_ = from;
      break;
    }
    case ControlOp::kGradSqSums:
      r.expect_end();
      require_turn(from, "gradient norms", false);
      require_layers_idle("gradient norms");
      require_all_grads("gradient norms");
      for (double s : grad_sq_sums(shard_)) w.f64(s);
      summed_ = true;
      break;
    case ControlOp::kApplyUpdate: {
      const float coef = r.f32(), lr = r.f32();
      r.expect_end();
      require_turn(from, "an update", false);
      if (!(coef > 0 && coef <= 1) || !finite_at_least(lr, 0))
        throw std::runtime_error("apply-update order with clip coefficient " + std::to_string(coef) + " or lr " +
                                 std::to_string(lr) + " out of range (coefficient in (0, 1], lr finite and >= 0)");
      if (!summed_)
        throw std::runtime_error("an update of turn " + std::to_string(turn_) + " before its gradient norms were taken");
      scale_grads(shard_, coef);
      opt_.step(shard_, lr);
      end_turn();
      break;
    }
    case ControlOp::kClipFactors: {
      const uint32_t layer = r.u32(), n_units = r.u32();
      require_turn(from, "clip factors", true);
      if (!privacy_.per_unit || layer >= (uint32_t)cfg_.n_layers || layers_[layer].stage != Stage::kUnits ||
          n_units != (uint32_t)layers_[layer].n_units)
        throw std::runtime_error("clip factors for layer " + std::to_string(layer) +
                                 " do not follow a per-unit backward of that layer");
      std::vector<float> factor(n_units);
      r.floats(factor.data(), n_units);
      r.expect_end();
      for (float f : factor)
        if (!(f >= 0 && f <= 1)) throw std::runtime_error("clip factor " + std::to_string(f) + " outside [0, 1]");
      compute_.add_clipped_grads((int)layer, factor.data());
      layers_[layer].stage = Stage::kIdle;  // each pass 1 is clipped once
      break;
    }
    case ControlOp::kApplyNoisyUpdate: {
      const float std = r.f32(), scale = r.f32(), lr = r.f32();
      const uint64_t stream = r.u64();
      r.expect_end();
      require_turn(from, "a noisy update", true);
      if (!privacy_.per_unit) throw std::runtime_error("a noisy update to a host not set up for DP-SGD");
      require_layers_idle("a noisy update");
      require_all_grads("a noisy update");
      if (exchange_ == Exchange::kWeights && std != 0)
        throw std::runtime_error("a noisy update with noise std " + std::to_string(std) +
                                 " in a weights exchange, where the owner noises every gradient sum before it leaves "
                                 "(std must be 0)");
      if (!finite_at_least(std, 0) || !(std::isfinite(scale) && scale > 0) || !finite_at_least(lr, 0))
        throw std::runtime_error("noisy-update order with noise std " + std::to_string(std) + ", scale " +
                                 std::to_string(scale) + " or lr " + std::to_string(lr) +
                                 " out of range (finite; std, lr >= 0; scale > 0)");
      add_noise(std, stream);
      scale_grads(shard_, scale);
      opt_.step(shard_, lr);
      end_turn();
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
