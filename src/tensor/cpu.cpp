#include "tensor/cpu.h"

#include <unistd.h>

#include <cstdlib>

namespace pcmoe {

void set_up_cpu_runtime(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) == 0) execv("/proc/self/exe", argv);
}

}  // namespace pcmoe
