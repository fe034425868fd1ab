// The seeded round-robin: who takes which turn. Every party, host and the coordinator derive it
// from (seed, number of parties) alone, so a host can tell whose turn a call belongs to.
#pragma once
#include <cstdint>
#include <vector>

namespace pcmoe {

// The order in which n parties take their turns in round r: a permutation drawn from the seed
// and r alone.
std::vector<int> round_order(uint64_t seed, int n_parties, int64_t round);
// The party that holds global turn `turn`: position turn % n of round turn / n.
int turn_holder(uint64_t seed, int n_parties, int64_t turn);
// Party `party`'s first turn at or after `from`, or `end` if it holds none before `end`.
int64_t next_turn_of(uint64_t seed, int n_parties, int party, int64_t from, int64_t end);

}  // namespace pcmoe
