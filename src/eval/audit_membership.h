// Membership inference against the released models of the runs `pcmoe audit` is given
// (docs/audit.md): every model a victim's data went into, as each run saved it.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

namespace pcmoe::eval {

// Each victim's training windows (the batches of its turns under the run's schedule; in a DP-SGD
// run, the units its Poisson draws picked, from the run's party*/dp_batches.json) against its
// validation windows (the same genres, never trained on), calibrated by the observer's local-only
// model of the same run when it has one (it never saw the victim's data) and otherwise by the
// shared starting model (start_view).
nlohmann::json membership_cells(const std::vector<std::filesystem::path>& runs, int observer, int n_parties,
                                const std::filesystem::path& start_view);

}  // namespace pcmoe::eval
