#include "tensor/cpu.h"

#include <unistd.h>

#include <cstdlib>

namespace pcmoe {

void set_up_cpu_runtime(char** argv) {
  bool changed = false;
  if (!std::getenv("OPENBLAS_CORETYPE")) {
    const char* core = nullptr;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      core = "Haswell";
    if (core) changed = setenv("OPENBLAS_CORETYPE", core, 1) == 0;
  }
  if (!std::getenv("OMP_WAIT_POLICY")) changed |= setenv("OMP_WAIT_POLICY", "passive", 1) == 0;
  if (changed) execv("/proc/self/exe", argv);
}

}  // namespace pcmoe
