// See variant_tuner.h.
#include "engine/variant_tuner.h"

#include <algorithm>

namespace distml::engine {

namespace {
// The order of a comparison's first round: the single copy first, the
// default before anything is known.
constexpr Variant kOrder[] = {Variant::kSingleCopy, Variant::kStaged, Variant::kStagedStreaming, Variant::kPairRing};
}  // namespace

double VariantTuner::Times::median() const {
  double v[kSamples];
  std::copy(last, last + count, v);
  std::sort(v, v + count);
  return count % 2 ? v[count / 2] : (v[count / 2 - 1] + v[count / 2]) / 2;
}

void VariantTuner::Times::add(double seconds) {
  last[next] = seconds;
  next = (next + 1) % kSamples;
  count = std::min(count + 1, kSamples);
}

std::uint32_t VariantTuner::key(Kind kind, std::size_t bytes, bool in_place) {
  std::uint32_t log2 = 0;
  while (log2 < 63 && (std::size_t{2} << log2) <= bytes) ++log2;
  return (static_cast<std::uint32_t>(in_place) << 16) | (static_cast<std::uint32_t>(kind) << 8) | log2;
}

VariantTuner::SizeClass& VariantTuner::size_class(Kind kind, std::size_t bytes, bool in_place) {
  return classes_[key(kind, bytes, in_place)];
}

double VariantTuner::median(Kind kind, std::size_t bytes, Variant variant, bool in_place) const {
  const auto it = classes_.find(key(kind, bytes, in_place));
  if (it == classes_.end()) return -1;
  const Times& t = it->second.variant[static_cast<int>(variant)];
  return t.count ? t.median() : -1;
}

void VariantTuner::SizeClass::start(unsigned offered) {
  n = calls = 0;
  for (const Variant each : kOrder) {
    const int v = static_cast<int>(each);
    if (!(offered >> v & 1u)) continue;
    order[n++] = v;
    variant[v] = Times{};
    handed[v] = untimed_taken[v] = 0;
    untimed[v] = kWarmup;
    untimed_seconds[v] = 0;
  }
}

// At a round's end: every variant has had its timed calls (fewer untimed
// rounds where calls are long), or every round has run.
bool VariantTuner::SizeClass::done() const {
  if (calls >= n * (kWarmup + kSamples)) return true;
  for (int i = 0; i < n; ++i) {
    const int v = order[i];
    if (untimed[v] > 0 || handed[v] - untimed_taken[v] < kSamples) return false;
  }
  return true;
}

Variant VariantTuner::choose(Kind kind, std::size_t bytes, double now, unsigned offered, bool in_place) {
  SizeClass& c = size_class(kind, bytes, in_place);
  const auto on_offer = [&](int v) { return (offered >> v & 1u) != 0; };
  // The fastest offered by its median (-1: none has times).
  const auto fastest = [&]() {
    int best = -1;
    for (const Variant variant : kOrder) {
      const int v = static_cast<int>(variant);
      if (on_offer(v) && c.variant[v].count && (best < 0 || c.variant[v].median() < c.variant[best].median()))
        best = v;
    }
    return best;
  };
  for (int pass = 0; pass < 2; ++pass) {
    if (c.n > 0 && c.calls % c.n == 0 && c.done()) {
      const int best = fastest();
      c.n = 0;
      c.since = 0;
      ++c.compared;
      c.known = true;  // compared_at: its last call's start
      if (best >= 0) {
        c.last = best;
        c.chosen_median = c.variant[best].median();
      }
    }
    // The comparison's next call: its variants in turn, each round starting
    // one further on, so that each follows each other alike. A variant no
    // longer offered (a size class whose calls straddle a size setting) is
    // passed over.
    for (int tries = 0; c.n > 0 && tries < c.n; ++tries) {
      const int v = c.order[(c.calls / c.n + c.calls % c.n) % c.n];
      ++c.calls;
      if (on_offer(v)) {
        ++c.handed[v];
        c.compared_at = now;
        return static_cast<Variant>(c.last = v);
      }
      if (c.calls % c.n == 0) break;  // a round's end: done() first
    }
    if (c.n > 0) continue;
    const double elapsed = now - c.compared_at;
    const bool period = elapsed > explore_seconds_ && c.since >= kPeriodCalls;
    const bool soon = elapsed > explore_seconds_ / 10 && c.since >= kPeriodCalls / 10;
    const Times& running = c.variant[c.last];
    const bool drifted = running.count == kSamples && running.median() > kDrift * c.chosen_median;
    // A variant offered that this size class has never timed (a setting
    // changed) is compared too, at that same pace.
    bool untried = false;
    for (int v = 0; v < kVariants; ++v) untried = untried || (on_offer(v) && c.variant[v].count == 0);
    const unsigned choices = offered & kOfferAll;
    const bool early = soon && (drifted || untried || c.compared == 1);
    if (pass == 0 && (choices & (choices - 1)) && (!c.known || period || early)) {
      c.start(offered);
      continue;
    }
    break;
  }
  if (!on_offer(c.last)) {
    // A variant not on offer now is never kept: the fastest offered, else
    // the first in kOrder.
    int v = fastest();
    for (const Variant variant : kOrder) {
      if (v < 0 && on_offer(static_cast<int>(variant))) v = static_cast<int>(variant);
    }
    if (v >= 0) c.last = v;
  }
  if (c.since < kPeriodCalls) ++c.since;  // only compared with kPeriodCalls: no overflow in long jobs
  return static_cast<Variant>(c.last);
}

void VariantTuner::record(Kind kind, std::size_t bytes, Variant variant, double seconds, bool in_place) {
  SizeClass& c = size_class(kind, bytes, in_place);
  const int v = static_cast<int>(variant);
  if (c.n > 0 && c.untimed[v] > 0) {
    c.untimed_seconds[v] += seconds;
    ++c.untimed_taken[v];
    c.untimed[v] = c.untimed_seconds[v] >= kWarmupSeconds ? 0 : c.untimed[v] - 1;
    return;
  }
  c.variant[v].add(seconds);
}

}  // namespace distml::engine
