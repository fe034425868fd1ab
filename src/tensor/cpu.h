// A setting the OpenMP runtime reads only once, when it loads, so a program sets it in its
// environment and re-executes itself once:
// - OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning, so a pcmoe process
//   that shares its cores (parties on one host, a busy machine) does not take them from the
//   others (spinning made such runs 3-10x slower). OMP_WAIT_POLICY=active in the environment
//   keeps spinning, a little faster on cores of one's own.
// A variable already set is left as it is. (No BLAS setting is needed: every product runs in
// oneDNN, which picks its kernels from the CPU's feature flags.)
#pragma once

namespace pcmoe {

// Call first thing in main(). Returns only if no re-execution was needed (or it failed, in
// which case the program goes on with the runtimes' own choices).
void set_up_cpu_runtime(char** argv);

}  // namespace pcmoe
