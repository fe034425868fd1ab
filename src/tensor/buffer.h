// One aligned, zero-initialised block of memory whose size is fixed when it is made.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace pcmoe {

class AlignedBuffer {
 public:
  static constexpr size_t kAlign = 64;
  // Blocks of kHugeMin bytes or more sit on 2 MiB pages where the kernel grants transparent huge
  // pages on request: the passes over tens of MB (AdamW's, the products') then miss the TLB far
  // less, and the memset below faults them in 512 times less often. The price: such a block is
  // rounded up to whole 2 MiB pages, all of them touched (a 4.1 MiB block holds 6 MiB of RSS),
  // which the arena plan (requested bytes) does not count.
  static constexpr size_t kHugePage = size_t(2) << 20, kHugeMin = size_t(4) << 20;
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    const size_t align = bytes >= kHugeMin ? kHugePage : kAlign;
    const size_t rounded = (bytes + align - 1) / align * align;
    data_ = static_cast<std::byte*>(std::aligned_alloc(align, rounded));
    if (!data_) throw std::bad_alloc();
    if (align == kHugePage) madvise(data_, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
    std::memset(data_, 0, rounded);
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  std::byte* data() const { return data_; }
  float* floats() const { return reinterpret_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace pcmoe
