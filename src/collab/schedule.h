// Who takes which turn. Every party, host and the coordinator derive it from (seed, number of
// parties, collab.schedule) alone, so a host can tell whose turn a call belongs to.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pcmoe {

// collab.schedule: "sequential" (the parties of a round take their turns one after another, in a
// seeded order, each against the experts the previous turn left) or "concurrent" (every party
// runs its turn of a round at once, against the experts as they stood at the round's start; each
// host steps once per round: docs/protocol.md).
enum class Schedule { kSequential, kConcurrent };
// Throws naming the key for anything but "sequential" and "concurrent".
Schedule parse_schedule(const std::string& name);

// The order in which n parties take their turns in round r: a permutation drawn from the seed
// and r alone (the sequential schedule's).
std::vector<int> round_order(uint64_t seed, int n_parties, int64_t round);
// The party that holds global turn `turn` of round turn / n: sequential, position turn % n of
// round_order; concurrent, party turn % n (every party holds one turn of every round).
int turn_holder(uint64_t seed, int n_parties, int64_t turn, Schedule schedule = Schedule::kSequential);
// Party `party`'s first turn at or after `from`, or `end` if it holds none before `end`.
int64_t next_turn_of(uint64_t seed, int n_parties, int party, int64_t from, int64_t end,
                     Schedule schedule = Schedule::kSequential);

}  // namespace pcmoe
