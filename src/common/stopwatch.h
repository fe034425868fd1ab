// Wall time for reports and progress lines: seconds on the steady clock since a start point.
#pragma once
#include <chrono>

namespace pcmoe {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace pcmoe
