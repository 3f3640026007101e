// Small helpers the engine's files share. Not part of the engine's interface.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "engine/communicator.h"

namespace distml::engine {

// Microseconds of the system clock, so that ranks' timelines line up.
inline double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// FNV-1a over bytes: fingerprints of signatures and settings.
inline std::uint64_t fnv1a(const void* data, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// The sizes of the agreement's messages (agreement.cpp): a call's Signature,
// and rank 0's Verdict when arrivals go through it.
constexpr std::size_t kSignatureBytes = 128, kVerdictBytes = 24;

inline bool is_variable(Kind kind) { return kind == Kind::kAlltoallv || kind == Kind::kAllgatherv; }

inline bool is_reduction(Kind kind) {
  return kind == Kind::kAllreduce || kind == Kind::kReduce || kind == Kind::kReduceScatter;
}

}  // namespace distml::engine
