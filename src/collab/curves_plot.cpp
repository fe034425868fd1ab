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

}  // namespace

void write_curve_plot(const nlohmann::json& curves, const std::string& dir) {
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
  gp << "set terminal svg size 1200,500 dynamic noenhanced font 'sans,11'\n"
     << "set output 'curves.svg'\n"
     << "set multiplot layout 1,2\n"
     << "set grid\nset key top right\nset ylabel 'validation loss (nats, pooled)'\n"
     << "set xlabel 'tokens trained per party'\n"
     << "plot " << by_tokens << "\n"
     << "set logscale x\nset xlabel 'bytes sent per party'\n"
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
