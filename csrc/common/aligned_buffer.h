// Scratch memory for schedules: 64-byte aligned, uninitialised, RAII, and the
// per-collective arena schedules take it from.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

#include "common/error.h"

namespace distml {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t bytes) { resize(bytes); }
  ~AlignedBuffer() { std::free(ptr_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      std::free(ptr_);
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }

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

namespace distml {

// The scratch memory of one collective, reserved before the ranks agree to
// run it: a rank that cannot get it joins the agreement as failed, and every
// rank raises, instead of failing alone halfway through a schedule while its
// peers wait for it. Schedules take pieces of the reservation in order
// (bump allocation); asking for more than was reserved is a bug in the
// engine's estimate and throws. The memory is kept for the next collective
// unless it is large.
class Scratch {
 public:
  // Makes `bytes` available to take() until the next reserve(); may throw
  // std::bad_alloc.
  void reserve(std::size_t bytes) {
    used_ = 0;
    reserved_ = 0;
    if (buffer_.size() < bytes || buffer_.size() > kKeepBytes) buffer_ = AlignedBuffer();
    buffer_.resize(bytes);
    reserved_ = bytes;
  }
  // The next `bytes` of the reservation, 64-byte aligned.
  char* take(std::size_t bytes) {
    const std::size_t n = rounded(bytes);
    if (used_ + n > reserved_) {
      DISTML_THROW(Error, "internal error: a schedule asked for more scratch memory than the engine reserved ("
                              << used_ + n << " > " << reserved_ << " bytes)");
    }
    char* p = buffer_.data() + used_;
    used_ += n;
    return p;
  }
  // Gives back memory above what is worth keeping between collectives.
  void trim() {
    if (buffer_.size() > kKeepBytes) buffer_ = AlignedBuffer();
    reserved_ = used_ = 0;
  }
  // Bytes one take(bytes) consumes of a reservation.
  static constexpr std::size_t rounded(std::size_t bytes) { return (bytes + 63) / 64 * 64; }

 private:
  static constexpr std::size_t kKeepBytes = std::size_t{16} << 20;
  AlignedBuffer buffer_;
  std::size_t reserved_ = 0;
  std::size_t used_ = 0;
};

}  // namespace distml
