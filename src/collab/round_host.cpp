// The expert host's side of collab.schedule "concurrent" (docs/protocol.md, "Concurrent
// rounds"): every party runs its turn of the open round at once, each in its own slot (its
// experts' forward state and its gradients, apart from every other party's); a party's update
// order closes its turn, and the round's last one combines the contributions in party order and
// steps the shard once. So the result does not depend on the order in which the calls arrive.
#include <stdexcept>
#include <string>

#include "collab/expert_host.h"

namespace pcmoe {

void ExpertHost::begin_round_turn(int from, uint64_t turn) {
  std::lock_guard<std::mutex> lock(round_mu_);
  const uint64_t n = (uint64_t)n_parties_, round = turn_ / n;
  if (turn / n != round)
    throw std::runtime_error("begin of turn " + std::to_string(turn) + " (round " + std::to_string(turn / n) +
                             "), but round " + std::to_string(round) + " is open");
  if (turn % n != (uint64_t)from)
    throw std::runtime_error("begin of turn " + std::to_string(turn) + ", which is party " + std::to_string(turn % n) +
                             "'s");
  Slot& s = slot_of(from);
  if (s.state != Slot::State::kIdle)
    throw std::runtime_error("a second begin of party " + std::to_string(from) + "'s turn of round " +
                             std::to_string(round) + " (one contribution per party and round)");
  s.grads->zero_grads();
  std::fill(s.grads_seen.begin(), s.grads_seen.end(), 0);
  s.summed = false;
  s.state = Slot::State::kOpen;
}

void ExpertHost::apply_in_round(int from, const Update& u) {
  std::lock_guard<std::mutex> lock(round_mu_);
  for (int q = 0; q < n_parties_; ++q) {
    const Slot& other = *slots_[q];
    if (q != from && other.state == Slot::State::kApplied && other.update.lr != u.lr)
      throw std::runtime_error("an update with lr " + std::to_string(u.lr) + " where party " + std::to_string(q) +
                               "'s update of round " + std::to_string(turn_ / n_parties_) + " has lr " +
                               std::to_string(other.update.lr) + " (a round steps the experts once, at one lr)");
  }
  Slot& s = slot_of(from);
  s.update = u;
  s.state = Slot::State::kApplied;
  for (const auto& q : slots_)
    if (q->state != Slot::State::kApplied) return;
  close_round();
}

// With round_mu_ held and every party's update in: the shard's gradient becomes the mean over the
// parties, in party order, of each contribution as its party's update order treats it (scaled by
// its clip coefficient; DP-SGD: noised, then scaled by its 1/(expected batch)); then one AdamW
// step. Every party's turn trains the same number of tokens (DP-SGD: each contribution is already
// an average over its expected batch), so the token-weighted mean is this equal-weighted one.
// Party 0's slot is the shard's own block: with one party the step is the sequential one, bit for bit.
void ExpertHost::close_round() {
  const float n = (float)n_parties_;
  for (int p = 0; p < n_parties_; ++p) {
    Slot& s = *slots_[p];
    if (s.update.noisy) add_noise(*s.grads, s.update.std, s.update.stream);
    const float weight = (s.update.noisy ? s.update.scale : s.update.coef) / n;
    if (p == 0) scale_grads(shard_, weight);
    else add_scaled_grads(shard_, *s.grads, weight);
  }
  opt_.step(shard_, slots_[0]->update.lr);
  turn_ += (uint64_t)n_parties_;
  for (auto& s : slots_) {
    s->state = Slot::State::kIdle;
    s->summed = false;
  }
}

}  // namespace pcmoe
