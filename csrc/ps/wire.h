// What the parameter server's ranks share: request and data tags, reply
// codes, how a range of the flat parameters is cut into messages, and small
// helpers over the pieces (contiguous runs) of the caller's arrays.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "ps/parameter_server.h"

namespace distml::ps {

namespace tp = distml::transport;
using Clock = std::chrono::steady_clock;

constexpr int kPush = 1, kPull = 2, kClose = 3, kStep = 4;  // request tags (= Header::op)
constexpr int kReplyTag = 1;
constexpr int kPushData = 1, kReplyData = 2;  // data channel tags
// Reply status codes. kWorkersLost: the close cannot complete, workers the
// server gave up on (async mode, csrc/ps/server.h Server::lose) will never
// close. An error reply's info0 names ranks as a bitmask (rank_bit); an OK
// reply's info0 is the mask of the workers its server has given up on.
constexpr std::int64_t kOk = 0, kWorkersLate = 1, kServerFailed = 2, kNotClosed = 3, kPeerLate = 4,
                       kWorkersLost = 5;

// Rank r's bit in a reply's mask: ranks 0..61 have their own bit, the
// higher ones share bit 62 ("and ranks above 61").
inline std::int64_t rank_bit(int r) { return std::int64_t{1} << (r < 62 ? r : 62); }

static_assert(sizeof(Header) == 64, "the header is part of the wire format");

// Data messages of one reply (a step's pieces, a pull's ranges) a server
// keeps under way towards one worker: each is a synchronous send, and the
// next is posted only once the one kReplyWindow before it has been matched.
// MPICH sends a message below its single-copy threshold (8 KiB here)
// through shared-memory cells taken from a pool of 64 per sending process,
// for all its peers, and a cell stays taken until its receiver takes the
// message. Without the window a worker that stops receiving in the middle
// of a reply in small pieces held every cell of its server's, and the
// server's replies to every other worker waited behind it. With it, a
// stopped worker holds at most this many. (tests/test_ps_faults.py,
// small pieces.)
constexpr std::size_t kReplyWindow = 8;

// Longest message, in elements (512 MiB of float64: below MPI's int count).
constexpr std::int64_t kCutElements = std::int64_t{1} << 26;

// Where range [lo, hi) is cut into messages: at every parameter's boundary
// (seg_bounds, prefix sums of the parameters' sizes) and every `limit`
// elements from each one's start, so that each message is contiguous in
// every rank's arrays. Sender and receiver compute the same cuts. Replies
// use kCutElements; pushes a limit of Config::piece_bytes, so that a server
// can apply each piece of a gradient while it is still in cache.
inline std::vector<std::pair<std::int64_t, std::int64_t>> cuts(const std::vector<std::int64_t>& seg_bounds, std::int64_t lo,
                                                        std::int64_t hi, std::int64_t limit = kCutElements) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  limit = std::max<std::int64_t>(1, std::min(limit, kCutElements));
  for (std::size_t j = 0; j + 1 < seg_bounds.size(); ++j) {
    const std::int64_t a0 = std::max(lo, seg_bounds[j]), b0 = std::min(hi, seg_bounds[j + 1]);
    for (std::int64_t a = a0; a < b0;) {
      const std::int64_t next = seg_bounds[j] + ((a - seg_bounds[j]) / limit + 1) * limit;
      const std::int64_t b = std::min(b0, next);
      out.emplace_back(a, b);
      a = b;
    }
  }
  return out;
}

// The part of `all` (pieces covering the flat space in order, `elem` bytes
// per element) that holds elements [lo, hi).
inline std::vector<tp::Piece> slice(const std::vector<tp::Piece>& all, std::size_t elem, std::int64_t lo,
                             std::int64_t hi) {
  std::vector<tp::Piece> out;
  const std::size_t begin = static_cast<std::size_t>(lo) * elem, end = static_cast<std::size_t>(hi) * elem;
  std::size_t at = 0;
  for (const tp::Piece& p : all) {
    const std::size_t p_end = at + p.bytes;
    const std::size_t a = std::max(at, begin), b = std::min(p_end, end);
    if (a < b) out.push_back({static_cast<const char*>(p.ptr) + (a - at), b - a});
    at = p_end;
    if (at >= end) break;
  }
  return out;
}

// The address of elements [a, b) in `all`, which must hold them in one piece.
inline char* address(const std::vector<tp::Piece>& all, std::size_t elem, std::int64_t a, std::int64_t b) {
  auto part = slice(all, elem, a, b);
  if (part.size() != 1 || part[0].bytes != static_cast<std::size_t>(b - a) * elem) {
    DISTML_THROW(InvalidArgument, "elements " << a << " to " << b << " are not contiguous in the arrays given "
                                              << "(pass one array per parameter, or one flat array)");
  }
  return static_cast<char*>(const_cast<void*>(part[0].ptr));
}

inline std::size_t total_bytes(const std::vector<tp::Piece>& pieces) {
  std::size_t n = 0;
  for (const auto& p : pieces) n += p.bytes;
  return n;
}

// Ranks in a bitmask (ranks above 62 are summarised).
inline std::string ranks_in(std::int64_t mask, std::int64_t more) {
  std::ostringstream os;
  os << "[";
  bool first = true;
  for (int r = 0; r < 63; ++r) {
    if (mask & (std::int64_t{1} << r)) {
      os << (first ? "" : ", ") << r;
      first = false;
    }
  }
  if (more) os << (first ? "" : ", ") << "and ranks above 62";
  os << "]";
  return os.str();
}

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline Clock::duration to_duration(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace distml::ps
