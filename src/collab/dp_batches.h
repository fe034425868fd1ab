// The record of a DP-SGD run's batches: for each party, the units its Poisson draw put in each
// round's batch. The draws come from a secret (privacy/sampling.h), so nothing else can tell
// afterwards which units a run trained on; the membership audit needs exactly that.
// The record is the party's own and as private as its data: a simulation writes every party's
// into that party's directory of the run.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace pcmoe {

struct DpBatches {
  std::string unit;                      // privacy.unit of the run
  int n_units = 0;                       // the party's units (its PrivacyUnits)
  std::vector<std::vector<int>> rounds;  // the units of each round's batch, ascending
};

// Party p's record in run directory `run`.
std::filesystem::path dp_batches_file(const std::filesystem::path& run, int party);
void save_dp_batches(const std::filesystem::path& file, const DpBatches& b);
// Throws a one-line error naming the file when it is missing, malformed or out of range.
DpBatches load_dp_batches(const std::filesystem::path& file);
// The same, and the record must be of `n_units` units of kind `unit`: the party's units of the
// data the reader rebuilt (a record of other data is refused, not misread).
DpBatches load_dp_batches(const std::filesystem::path& file, const std::string& unit, int n_units);

}  // namespace pcmoe
