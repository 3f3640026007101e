// Scratch memory for schedules: 64-byte aligned, uninitialised, RAII.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace distml {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t bytes) { resize(bytes); }
  ~AlignedBuffer() { std::free(ptr_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  // Grows to at least `bytes`; contents are not kept.
  void resize(std::size_t bytes) {
    if (bytes <= bytes_) return;
    std::free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    std::size_t rounded = (bytes + 63) / 64 * 64;
    ptr_ = static_cast<char*>(std::aligned_alloc(64, rounded));
    if (!ptr_) throw std::bad_alloc();
    bytes_ = rounded;
  }
  char* data() { return ptr_; }
  std::size_t size() const { return bytes_; }

 private:
  char* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace distml
