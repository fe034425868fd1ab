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
                       const HostPrivacy& privacy, WireDtype wire, Exchange exchange, Schedule schedule)
    : cfg_(cfg), party_(party), n_parties_(n_parties), seed_(tc.seed), wire_(wire), exchange_(exchange),
      schedule_(schedule), local_(hosted_experts(cfg.n_experts, party, n_parties)),
      shard_(cfg, shard_selection(party, n_parties)), opt_(shard_, tc), privacy_(privacy) {
  shard_.init(tc.seed);
  const int n_slots = schedule == Schedule::kConcurrent ? n_parties : 1;
  for (int i = 0; i < n_slots; ++i) {
    auto s = std::make_unique<Slot>();
    if (i > 0) s->own = std::make_unique<ParamSet>(shard_, ParamSet::SharedValues{});
    s->grads = i > 0 ? s->own.get() : &shard_;
    // a weights-exchange host runs no expert: its owners do
    s->compute = std::make_unique<LocalExperts>(cfg, *s->grads, exchange == Exchange::kWeights ? 0 : max_rows,
                                                privacy.per_unit, /*keep_inputs=*/wire != WireDtype::kF32);
    s->layers.resize(cfg.n_layers);
    if (exchange == Exchange::kWeights) {
      s->grad_in.resize(expert_floats(cfg));
      s->grads_seen.assign((size_t)cfg.n_layers * local_.size(), 0);
    } else if (wire != WireDtype::kF32) {
      // An fp32 reply always encodes; a narrower one fails on overflow after its backward has
      // added the gradients, which the undo copy then restores (keep_inputs keeps the forward
      // that backward used).
      s->undo.resize(local_.size() * 3 * (size_t)cfg.d_model * cfg.d_ff);
    }
    slots_.push_back(std::move(s));
  }
}

uint64_t ExpertHost::turn() const {
  std::lock_guard<std::mutex> lock(round_mu_);
  return turn_;
}

size_t ExpertHost::activation_bytes() const {
  size_t b = 0;
  for (const auto& s : slots_) b += s->compute->activation_bytes();
  return b;
}

size_t ExpertHost::scratch_bytes() const {
  size_t b = 0;
  for (const auto& s : slots_) b += (s->undo.size() + s->grad_in.size()) * sizeof(float);
  return b;
}

size_t ExpertHost::slot_gradient_bytes() const { return (slots_.size() - 1) * shard_.numel() * sizeof(float); }

void ExpertHost::start_at(uint64_t turn) {
  std::lock_guard<std::mutex> lock(round_mu_);
  if (schedule_ == Schedule::kConcurrent && turn % n_parties_ != 0)
    throw std::logic_error("a concurrent host starts at a round's first turn, not turn " + std::to_string(turn));
  turn_ = turn;
  holder_ = -1;
  for (auto& s : slots_) {
    s->summed = false;
    s->state = Slot::State::kIdle;
    for (Layer& l : s->layers) l.stage = Stage::kIdle;
    std::fill(s->grads_seen.begin(), s->grads_seen.end(), 0);
  }
}

void ExpertHost::end_turn() {
  holder_ = -1;
  slots_[0]->summed = false;
  ++turn_;
}

Bytes ExpertHost::handle(MsgKind kind, int from, const Bytes& request) {
  try {
    if (from < 0 || from >= n_parties_)
      throw std::runtime_error("the run's parties are 0.." + std::to_string(n_parties_ - 1));
    if (schedule_ == Schedule::kSequential) return serve(kind, from, request);
    std::lock_guard<std::mutex> lock(slot_of(from).mu);  // a caller's calls, one at a time
    return serve(kind, from, request);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("party " + std::to_string(party_) + " refused " + to_string(kind) + " from party " +
                             std::to_string(from) + ": " + e.what());
  }
}

Bytes ExpertHost::serve(MsgKind kind, int from, const Bytes& request) {
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

bool ExpertHost::in_turn(int from) const {
  if (schedule_ == Schedule::kSequential) return holder_ >= 0;
  std::lock_guard<std::mutex> lock(round_mu_);
  return slot_of(from).state == Slot::State::kOpen;
}

void ExpertHost::require_turn(int from, const std::string& what, bool gradients_open) const {
  if (schedule_ == Schedule::kConcurrent) {
    std::lock_guard<std::mutex> lock(round_mu_);
    const uint64_t round = turn_ / n_parties_;
    switch (slot_of(from).state) {
      case Slot::State::kIdle:
        throw std::runtime_error(what + " outside a turn (party " + std::to_string(from) + "'s turn of round " +
                                 std::to_string(round) + " has not begun)");
      case Slot::State::kApplied:
        throw std::runtime_error(what + " after party " + std::to_string(from) + "'s update of round " +
                                 std::to_string(round) + " (its turn of the round is over)");
      case Slot::State::kOpen: break;
    }
  } else {
    if (holder_ < 0)
      throw std::runtime_error(what + " outside a turn (turn " + std::to_string(turn_) + " has not begun)");
    if (from != holder_)
      throw std::runtime_error(what + " during turn " + std::to_string(turn_) + ", which is party " +
                               std::to_string(holder_) + "'s");
  }
  if (gradients_open && slot_of(from).summed)
    throw std::runtime_error(what + " after the gradient norms of turn " + std::to_string(turn_) +
                             " were taken (only its update may follow)");
}

void ExpertHost::require_layers_idle(const Slot& s, const std::string& what) const {
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (s.layers[l].stage != Stage::kIdle)
      throw std::runtime_error(what + " while layer " + std::to_string(l) + "'s " +
                               (s.layers[l].stage == Stage::kForwarded ? "forward awaits its backward"
                                                                       : "per-unit backward awaits its clip factors"));
}

std::unique_lock<std::mutex> ExpertHost::evaluation_lock(bool evaluation) {
  if (evaluation && schedule_ == Schedule::kConcurrent) return std::unique_lock<std::mutex>(round_mu_);
  return {};
}

void ExpertHost::keep_grads(Slot& s, int layer, bool restore) {
  float* at = s.undo.data();
  for (int e : local_)
    for (const char* w : {"w1", "w3", "w2"}) {
      const ParamTensor& t = s.grads->info(expert_param(layer, e, w));
      float* g = s.grads->grads() + t.offset;
      if (restore) std::copy_n(at, t.numel, g);
      else std::copy_n(g, t.numel, at);
      at += t.numel;
    }
}

Bytes ExpertHost::expert_call(Call call, MsgKind kind, int from, const Bytes& request) {
  // With no turn open a forward is an evaluation: any party's, kept for no backward.
  const bool evaluation = call == Call::kForward && !in_turn(from);
  if (!evaluation) require_turn(from, to_string(kind), true);
  const std::unique_lock<std::mutex> weights_still = evaluation_lock(evaluation);
  Slot& sl = slot_of(from);
  ExpertRequest& in = sl.in;
  decode_expert_request(kind, request, cfg_, local_, sl.compute->max_rows(), in, wire_);
  const int layer = in.layer;
  const std::vector<int>& offsets = in.offsets;
  Layer& st = sl.layers[layer];
  if (call == Call::kForward && !evaluation && st.stage != Stage::kIdle)
    throw std::runtime_error("a forward of layer " + std::to_string(layer) + " before the backward of its last one");
  if (call != Call::kForward && st.stage != Stage::kForwarded)
    throw std::runtime_error("a backward of layer " + std::to_string(layer) + " with no forward awaiting it");
  if (call != Call::kForward && offsets != st.offsets)
    throw std::runtime_error("backward call does not match the rows of the last forward of layer " + std::to_string(layer));
  const size_t total = (size_t)in.n_rows() * cfg_.d_model;
  sl.out.resize(total);
  std::vector<double> sq((size_t)in.n_units, 0.0);
  const bool undo = call == Call::kBackward && !sl.undo.empty();
  if (undo) keep_grads(sl, layer, false);
  LocalExperts& compute = *sl.compute;
  switch (call) {
    case Call::kForward: compute.forward(layer, offsets.data(), in.rows.data(), sl.out.data()); break;
    case Call::kBackward: compute.backward(layer, offsets.data(), in.rows.data(), sl.out.data()); break;
    case Call::kBackwardUnits:
      compute.backward_unit_norms(layer, offsets.data(), in.rows.data(), in.units.data(), in.n_units, sl.out.data(),
                                  sq.data());
      break;
  }
  // A reply that cannot be encoded (fp16 overflow) fails the call: the layer keeps its stage (a
  // forward's saved rows are used by no backward) and a backward's gradients are restored.
  Bytes reply;
  try {
    reply = encode_expert_reply(sl.out.data(), total, sq.data(), in.n_units, wire_);
  } catch (const std::runtime_error&) {
    if (undo) keep_grads(sl, layer, true);
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
      st.n_units = in.n_units;
      break;
  }
  return reply;
}

namespace {
bool finite_at_least(float v, float low) { return std::isfinite(v) && v >= low; }
}  // namespace

void ExpertHost::begin_turn(int from, uint64_t turn) {
  if (schedule_ == Schedule::kConcurrent) return begin_round_turn(from, turn);
  if (holder_ >= 0)
    throw std::runtime_error("begin of turn " + std::to_string(turn) + " while turn " + std::to_string(turn_) +
                             " (party " + std::to_string(holder_) + "'s) is open");
  if (turn != turn_)
    throw std::runtime_error("begin of turn " + std::to_string(turn) + ", but turn " + std::to_string(turn_) + " is next");
  if (const int h = turn_holder(seed_, n_parties_, (int64_t)turn); h != from)
    throw std::runtime_error("begin of turn " + std::to_string(turn) + ", which is party " + std::to_string(h) + "'s");
  Slot& s = slot_of(from);
  shard_.zero_grads();
  std::fill(s.grads_seen.begin(), s.grads_seen.end(), 0);
  holder_ = from;
}

void ExpertHost::apply(int from, const Update& u) {
  if (schedule_ == Schedule::kConcurrent) return apply_in_round(from, u);
  if (u.noisy) {
    add_noise(shard_, u.std, u.stream);
    scale_grads(shard_, u.scale);
  } else {
    scale_grads(shard_, u.coef);
  }
  opt_.step(shard_, u.lr);
  end_turn();
}

Bytes ExpertHost::control(int from, const Bytes& request) {
  Reader r(request);
  const auto op = static_cast<ControlOp>(r.u32());
  Writer w;
  Slot& sl = slot_of(from);
  switch (op) {
    case ControlOp::kBeginTurn: {
      const uint64_t turn = r.u64();
      r.expect_end();
      begin_turn(from, turn);
      break;
    }
    case ControlOp::kGradSqSums:
      r.expect_end();
      require_turn(from, "gradient norms", false);
      require_layers_idle(sl, "gradient norms");
      require_all_grads(sl, "gradient norms");
      for (double s : grad_sq_sums(*sl.grads)) w.f64(s);
      sl.summed = true;
      break;
    case ControlOp::kApplyUpdate: {
      Update u;
      u.coef = r.f32();
      u.lr = r.f32();
      r.expect_end();
      require_turn(from, "an update", false);
      if (!(u.coef > 0 && u.coef <= 1) || !finite_at_least(u.lr, 0))
        throw std::runtime_error("apply-update order with clip coefficient " + std::to_string(u.coef) + " or lr " +
                                 std::to_string(u.lr) + " out of range (coefficient in (0, 1], lr finite and >= 0)");
      if (!sl.summed)
        throw std::runtime_error("an update of turn " + std::to_string(turn_) + " before its gradient norms were taken");
      apply(from, u);
      break;
    }
    case ControlOp::kClipFactors: {
      const uint32_t layer = r.u32(), n_units = r.u32();
      require_turn(from, "clip factors", true);
      if (!privacy_.per_unit || layer >= (uint32_t)cfg_.n_layers || sl.layers[layer].stage != Stage::kUnits ||
          n_units != (uint32_t)sl.layers[layer].n_units)
        throw std::runtime_error("clip factors for layer " + std::to_string(layer) +
                                 " do not follow a per-unit backward of that layer");
      std::vector<float> factor(n_units);
      r.floats(factor.data(), n_units);
      r.expect_end();
      for (float f : factor)
        if (!(f >= 0 && f <= 1)) throw std::runtime_error("clip factor " + std::to_string(f) + " outside [0, 1]");
      sl.compute->add_clipped_grads((int)layer, factor.data());
      sl.layers[layer].stage = Stage::kIdle;  // each pass 1 is clipped once
      break;
    }
    case ControlOp::kApplyNoisyUpdate: {
      Update u;
      u.noisy = true;
      u.std = r.f32();
      u.scale = r.f32();
      u.lr = r.f32();
      u.stream = r.u64();
      r.expect_end();
      require_turn(from, "a noisy update", true);
      if (!privacy_.per_unit) throw std::runtime_error("a noisy update to a host not set up for DP-SGD");
      require_layers_idle(sl, "a noisy update");
      require_all_grads(sl, "a noisy update");
      if (exchange_ == Exchange::kWeights && u.std != 0)
        throw std::runtime_error("a noisy update with noise std " + std::to_string(u.std) +
                                 " in a weights exchange, where the owner noises every gradient sum before it leaves "
                                 "(std must be 0)");
      if (!finite_at_least(u.std, 0) || !(std::isfinite(u.scale) && u.scale > 0) || !finite_at_least(u.lr, 0))
        throw std::runtime_error("noisy-update order with noise std " + std::to_string(u.std) + ", scale " +
                                 std::to_string(u.scale) + " or lr " + std::to_string(u.lr) +
                                 " out of range (finite; std, lr >= 0; scale > 0)");
      apply(from, u);
      break;
    }
    default:
      throw std::runtime_error("unknown control operation " + std::to_string((uint32_t)op));
  }
  return w.take();
}

void ExpertHost::add_noise(ParamSet& grads, float std, uint64_t stream) {
  if (privacy_.seeded) {
    // The stream names (party, turn); the host id keeps hosts' noise apart.
    NoiseSource src = NoiseSource::seeded(privacy_.test_seed, stream * 1024 + (uint64_t)party_);
    add_gaussian_noise(grads, src, std);
    return;
  }
  if (!noise_) noise_ = std::make_unique<NoiseSource>(NoiseSource::secure());
  add_gaussian_noise(grads, *noise_, std);
}

}  // namespace pcmoe
