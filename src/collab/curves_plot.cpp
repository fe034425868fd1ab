#include "collab/curves_plot.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace pcmoe {
namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// A gnuplot single-quoted string (a quote inside is written twice).
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

}  // namespace

void write_curve_plot(const nlohmann::json& curves, const std::string& dir, const CurvePlotText& text) {
  namespace fs = std::filesystem;
  // One gnuplot data block per mode (blocks are separated by two blank lines: `index i`).
  std::ofstream dat(fs::path(dir) / "curves.dat");
  std::ofstream gp(fs::path(dir) / "curves.gp");
  dat << "# tokens_per_party bytes_sent_per_party val_loss_pooled (one block per mode)\n";
  std::string by_tokens, by_bytes;
  int i = 0;
  for (const auto& [mode, curve] : curves.items()) {
    dat << "# " << mode << "\n";
    bool sends = false;
    for (const auto& pt : curve) {
      dat << pt["tokens_per_party"].get<double>() << " " << pt["bytes_sent_per_party"].get<double>() << " "
          << pt["val_loss_pooled"].get<double>() << "\n";
      sends |= pt["bytes_sent_per_party"].get<double>() > 0;
    }
    dat << "\n\n";
    // One line type per mode, so a mode looks the same in both panels.
    const std::string idx = "'curves.dat' index " + std::to_string(i), style = " with linespoints lt " + std::to_string(i + 1);
    ++i;
    by_tokens += (by_tokens.empty() ? "" : ", ") + idx + " using 1:3" + style + " title '" + mode + "'";
    // Points without bytes (the start) cannot sit on a log axis.
    if (sends)
      by_bytes += (by_bytes.empty() ? "" : ", ") + idx + " using ($2 > 0 ? $2 : 1/0):3" + style + " title '" + mode + "'";
  }
  // The notes sit under both panels, one line each, in screen coordinates of the first plot.
  const double line = 0.032, bottom = 0.13 + line * (double)text.notes.size();
  gp << "set terminal svg size 1200," << 520 + 18 * text.notes.size() << " dynamic noenhanced font 'sans,11'\n"
     << "set output 'curves.svg'\n"
     << "set multiplot layout 1,2 title " << gp_quote(text.title) << " font 'sans,13' margins 0.06,0.98,"
     << bottom << ",0.90 spacing 0.07,0\n";
  for (size_t k = 0; k < text.notes.size(); ++k)
    gp << "set label " << k + 1 << " " << gp_quote(text.notes[k]) << " at screen 0.01, " << bottom - 0.10 - line * (double)k
       << " left\n";
  gp << "set grid\nset key top right\nset ylabel 'validation loss, pooled (nats per token)'\n"
     << "set xlabel 'tokens trained per party'\n"
     << "plot " << by_tokens << "\n"
     << "unset label\n"
     << "set logscale x\nset xlabel 'bytes sent per party (log scale; the start, at 0 bytes, is not drawn)'\n"
     << (by_bytes.empty() ? "set label 'no mode sends bytes' at graph 0.5, 0.5 center\nplot 1/0 notitle\n"
                          : "plot " + by_bytes + "\n")
     << "unset multiplot\n";
  dat.close();
  gp.close();
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::fprintf(stderr, "curves: gnuplot is not installed; wrote curves.dat and curves.gp, plot skipped\n");
    return;
  }
  if (std::system(("cd " + shell_quote(dir) + " && gnuplot curves.gp > /dev/null 2>&1").c_str()) != 0)
    std::fprintf(stderr, "curves: gnuplot failed on %s/curves.gp, plot skipped\n", dir.c_str());
}

}  // namespace pcmoe
