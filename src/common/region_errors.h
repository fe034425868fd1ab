// An exception thrown inside an OpenMP parallel region must not leave it: that calls
// std::terminate, and the process dies without the error reaching the caller (a party thread,
// the CLI's error report). run() keeps the first one; rethrow() raises it after the region.
#pragma once
#include <exception>

namespace pcmoe {

class RegionErrors {
 public:
  template <class F>
  void run(F&& body) noexcept {
    try {
      body();
    } catch (...) {
#pragma omp critical(pcmoe_region_errors)
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::exception_ptr first_;
};

}  // namespace pcmoe
