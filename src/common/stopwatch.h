// Wall time for reports and progress lines: seconds on the steady clock since a start point;
// and the process's CPU time, which a busy shared machine disturbs less than wall time.
#pragma once
#include <time.h>

#include <chrono>

namespace pcmoe {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU seconds this process has used so far, all its threads together.
inline double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

}  // namespace pcmoe
