// The figure of `pcmoe collab`: every mode's validation loss against tokens trained per party
// (left) and against bytes sent per party (right, log scale; modes that send nothing are absent).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pcmoe {

// What makes the figure read on its own: a title (what was trained) and notes printed under the
// panels (whose data, what "pooled" means, what a panel leaves out).
struct CurvePlotText {
  std::string title;
  std::vector<std::string> notes;
};

// curves: {mode: [{"tokens_per_party", "bytes_sent_per_party", "val_loss_pooled", ...}, ...]}.
// Writes dir/curves.dat and dir/curves.gp and runs gnuplot on them, giving dir/curves.svg; when
// gnuplot is not installed, or fails, prints one line saying the plot was skipped.
void write_curve_plot(const nlohmann::json& curves, const std::string& dir, const CurvePlotText& text = {});

}  // namespace pcmoe
