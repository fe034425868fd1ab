// The figure of `pcmoe collab`: every mode's validation loss against tokens trained per party
// (left) and against bytes sent per party (right, log scale; modes that send nothing are absent).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace pcmoe {

// curves: {mode: [{"tokens_per_party", "bytes_sent_per_party", "val_loss_pooled", ...}, ...]}.
// Writes dir/curves.dat and dir/curves.gp and runs gnuplot on them, giving dir/curves.svg; when
// gnuplot is not installed, or fails, prints one line saying the plot was skipped.
void write_curve_plot(const nlohmann::json& curves, const std::string& dir);

}  // namespace pcmoe
