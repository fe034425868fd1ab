// OpenBLAS picks its kernels from the CPU model when the library loads. On virtual CPUs it may
// not recognise (this project's own machines report a generic "Intel Xeon Processor") it falls
// back to SSE3 kernels, 4x slower than the AVX-512 ones the CPU has. The choice can only be
// steered by OPENBLAS_CORETYPE before the library loads, so a program that finds it unset sets
// it from the CPU's own feature flags and re-executes itself once.
#pragma once

namespace pcmoe {

// Call first thing in main(). Returns only if no re-execution was needed (or it failed, in
// which case the program goes on with OpenBLAS's own choice).
void select_blas_kernels(char** argv);

}  // namespace pcmoe
