// common/region_errors.h: an exception thrown in one iteration of an OpenMP loop reaches the
// caller after the loop (without it, std::terminate), the other iterations still run, and only
// the first exception is kept.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "common/region_errors.h"
#include "tensor/gemm.h"

namespace pcmoe {
namespace {

TEST(RegionErrors, AnExceptionInsideAParallelLoopReachesTheCaller) {
  const int before = num_threads();
  set_num_threads(2);
  std::atomic<int> ran{0};
  RegionErrors errors;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < 64; ++i)
    errors.run([&] {
      ++ran;
      if (i == 37 || i == 38) throw std::runtime_error("iteration " + std::to_string(i));
    });
  set_num_threads(before);
  EXPECT_EQ(ran.load(), 64);
  try {
    errors.rethrow();
    ADD_FAILURE() << "nothing rethrown";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(what == "iteration 37" || what == "iteration 38") << what;
  }
  RegionErrors none;
  EXPECT_NO_THROW(none.rethrow());
}

}  // namespace
}  // namespace pcmoe
