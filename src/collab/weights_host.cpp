// The expert host's side of collab.exchange "weights" (src/collab/weights_turn.h): it hands out
// its experts' weights and keeps each expert's gradient sum of the turn. The rules are those of
// the activations exchange (ExpertHost::handle): the open turn's holder only; with no turn open,
// a fetch is an evaluation, served to any party; nothing changes before a call is fully checked.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "collab/expert_host.h"

namespace pcmoe {

Bytes ExpertHost::weights_call(MsgKind kind, int from, const Bytes& request) {
  Slot& sl = slot_of(from);
  if (kind == MsgKind::kExpertWeights) {
    // Weights are the consortium's: a fetch changes nothing, so with no turn open it is an
    // evaluation's; within a turn it is the holder's alone, before the turn's norms are taken.
    const bool evaluation = !in_turn(from);
    if (!evaluation) require_turn(from, "a weight fetch", true);
    const std::unique_lock<std::mutex> weights_still = evaluation_lock(evaluation);
    const ExpertRef ref = decode_weights_request(request, cfg_, local_);
    const auto value = [&](const char* w) { return shard_.value(expert_param(ref.layer, ref.expert, w)); };
    return encode_expert_floats(value("w1"), value("w3"), value("w2"), cfg_, wire_);
  }
  require_turn(from, "a gradient sum", true);
  const size_t fc = (size_t)cfg_.d_ff * cfg_.d_model;
  float* in = sl.grad_in.data();
  const ExpertRef ref = decode_grads_request(request, cfg_, local_, wire_, in, in + fc, in + 2 * fc);
  const size_t slot = (size_t)ref.layer * local_.size() +
                      (std::find(local_.begin(), local_.end(), ref.expert) - local_.begin());
  if (sl.grads_seen[slot])
    throw std::runtime_error("a second gradient sum of layer " + std::to_string(ref.layer) + " expert " +
                             std::to_string(ref.expert) + " in turn " + std::to_string(turn_));
  // The turn's one sum of this expert (the gradients were zeroed when it began): kept as sent.
  const char* names[] = {"w1", "w3", "w2"};
  for (int i = 0; i < 3; ++i) std::copy_n(in + i * fc, fc, sl.grads->grad(expert_param(ref.layer, ref.expert, names[i])));
  sl.grads_seen[slot] = 1;
  return {};
}

void ExpertHost::require_all_grads(const Slot& s, const std::string& what) const {
  if (exchange_ != Exchange::kWeights) return;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    if (!cfg_.is_moe(l)) continue;
    for (size_t i = 0; i < local_.size(); ++i)
      if (!s.grads_seen[(size_t)l * local_.size() + i])
        throw std::runtime_error(what + " of turn " + std::to_string(turn_) + " before the gradient sum of layer " +
                                 std::to_string(l) + " expert " + std::to_string(local_[i]) + " arrived");
  }
}

}  // namespace pcmoe
