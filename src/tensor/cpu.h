// Settings the OpenMP and BLAS runtimes read only once, when they load, so a program sets them
// in its environment and re-executes itself once:
// - OPENBLAS_CORETYPE: on virtual CPUs OpenBLAS may not recognise (this project's own machines
//   report a generic "Intel Xeon Processor") it falls back to SSE3 kernels, 4x slower than the
//   AVX-512 ones the CPU has; it is set from the CPU's own feature flags.
// - OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning, so a pcmoe process
//   that shares its cores (parties on one host, a busy machine) does not take them from the
//   others (spinning made such runs 3-10x slower). OMP_WAIT_POLICY=active in the environment
//   keeps spinning, a little faster on cores of one's own.
// A variable already set is left as it is.
#pragma once

namespace pcmoe {

// Call first thing in main(). Returns only if no re-execution was needed (or it failed, in
// which case the program goes on with the runtimes' own choices).
void set_up_cpu_runtime(char** argv);

}  // namespace pcmoe
