// Planned memory: a layout function takes every buffer it needs from an Arena, once to measure
// (no memory behind it) and once more to hand out real pointers into one block of exactly the
// measured size. So the bytes a model needs are known before the first step.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "tensor/buffer.h"

namespace pcmoe {

class Arena {
 public:
  // Measuring arena: take() returns nullptr and only counts bytes.
  Arena() = default;
  // Allocating arena over `block`, which must be at least the measured size.
  explicit Arena(const AlignedBuffer& block) : base_(block.data()), capacity_(block.bytes()) {}

  template <class T>
  T* take(size_t count) {
    size_t offset = (used_ + AlignedBuffer::kAlign - 1) / AlignedBuffer::kAlign * AlignedBuffer::kAlign;
    used_ = offset + count * sizeof(T);
    if (!base_) return nullptr;
    if (used_ > capacity_) throw std::logic_error("arena plan exceeded its measured size");
    return reinterpret_cast<T*>(base_ + offset);
  }
  size_t used() const { return used_; }

 private:
  std::byte* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
};

// Runs `layout(Arena&)` twice: to measure, then to place its buffers in `block`.
template <class Layout>
void plan_and_place(AlignedBuffer& block, Layout&& layout) {
  Arena measure;
  layout(measure);
  block = AlignedBuffer(measure.used());
  Arena place(block);
  layout(place);
}

}  // namespace pcmoe
