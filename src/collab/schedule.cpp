#include "collab/schedule.h"

#include <stdexcept>

#include "tensor/rng.h"

namespace pcmoe {

Schedule parse_schedule(const std::string& name) {
  if (name == "sequential") return Schedule::kSequential;
  if (name == "concurrent") return Schedule::kConcurrent;
  throw std::runtime_error("config key 'collab.schedule' must be \"sequential\" or \"concurrent\", not '" + name + "'");
}

std::vector<int> round_order(uint64_t seed, int n_parties, int64_t round) {
  std::vector<int> order(n_parties);
  for (int i = 0; i < n_parties; ++i) order[i] = i;
  Rng rng(splitmix64(seed ^ 0x70636d6f65ULL) + (uint64_t)round * 0x9e3779b97f4a7c15ULL);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.next_u64() % i]);
  return order;
}

int turn_holder(uint64_t seed, int n_parties, int64_t turn, Schedule schedule) {
  if (schedule == Schedule::kConcurrent) return (int)(turn % n_parties);
  return round_order(seed, n_parties, turn / n_parties)[turn % n_parties];
}

int64_t next_turn_of(uint64_t seed, int n_parties, int party, int64_t from, int64_t end, Schedule schedule) {
  for (int64_t t = from; t < end; ++t)
    if (turn_holder(seed, n_parties, t, schedule) == party) return t;
  return end;
}

}  // namespace pcmoe
