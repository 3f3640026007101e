// Eager collectives on one node: a small call's data travels with the arrival.
//
// Each rank's control block holds two eager areas (ShmControl::eager), used by
// collectives of alternating number: arriving at collective v, a rank writes
// its input into eager[v & 1] (post_eager; for a broadcast only the root does)
// before it announces its arrival. Once every rank has arrived, each reads what
// it needs straight from its peers' areas: the arrival is the only
// synchronisation, where a schedule would add one or two of its own.
//
// Reuse invariant (a broken one is silently wrong data): a rank writes
// eager[v & 1] only on arriving at v, after every rank's arrival at v - 1
// (which v - 1's agreement waited for, or, after a one-way broadcast, the
// check at the start of v), which each made only after finishing v - 2.
// So nobody still reads eager[v & 1] for v - 2.
//
// A small broadcast is one-way: its root posts and returns without waiting
// for anyone, and the others wait for the root alone (engine/agreement.cpp).
//
// Fail-together: with nothing after the arrival, a rank that arrives after
// its peers timed out would find their data and complete alone. The arrival
// gate (ShmGroup::enter/give_up) orders every entry against giving up, so
// that rank raises instead.
//
// Reductions combine all ranks' data in rank order, so every rank that
// computes an element gets bitwise the same value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

// The most bytes a rank may post for one collective.
constexpr std::size_t kEagerBytes = transport::ShmControl::kEagerBytes;

// Writes this rank's data for collective `seq` (before its arrival).
void post_eager(transport::ShmGroup& shm, std::uint64_t seq, const void* data, std::size_t bytes);

// After every rank's arrival at `seq`: the reduction of all ranks' `count`
// elements (elements [first, first + count) of each posted input) into `out`.
// Finishes averages when `red.average_over` is set.
void reduce_eager(transport::ShmGroup& shm, std::uint64_t seq, void* out, std::size_t first,
                  std::size_t count, const Reduction& red);
// The root's posted bytes into `out`.
void broadcast_eager(transport::ShmGroup& shm, std::uint64_t seq, void* out, std::size_t bytes, int root);
// Every rank's posted `bytes` into `out`, in rank order.
void allgather_eager(transport::ShmGroup& shm, std::uint64_t seq, void* out, std::size_t bytes);
// Block `rank` of every rank's posted blocks of `block_bytes` into `out`, in
// rank order (alltoall; `out` may be the posted input itself).
void alltoall_eager(transport::ShmGroup& shm, std::uint64_t seq, void* out, std::size_t block_bytes);

}  // namespace distml::algorithms
