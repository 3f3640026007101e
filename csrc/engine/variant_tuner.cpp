// See variant_tuner.h.
#include "engine/variant_tuner.h"

#include <algorithm>

namespace distml::engine {

double VariantTuner::Times::median() const {
  double v[kSamples];
  std::copy(last, last + count, v);
  std::sort(v, v + count);
  return count % 2 ? v[count / 2] : (v[count / 2 - 1] + v[count / 2]) / 2;
}

VariantTuner::SizeClass& VariantTuner::size_class(Kind kind, std::size_t bytes) {
  std::uint32_t log2 = 0;
  while (log2 < 63 && (std::size_t{2} << log2) <= bytes) ++log2;
  return classes_[(static_cast<std::uint32_t>(kind) << 8) | log2];
}

bool VariantTuner::choose(Kind kind, std::size_t bytes, double now) {
  SizeClass& c = size_class(kind, bytes);
  if (c.untimed > 0 || c.timed > 0) return c.last = c.bursting;
  // The single copy first: the default before anything is known.
  const Times& running = c.variant[c.last];
  const double period =
      running.count ? std::max(explore_seconds_, kPeriodCalls * running.median()) : explore_seconds_;
  for (const bool single : {true, false}) {
    const Times& t = c.variant[single];
    if (t.count < kSamples || now - t.at > period) {
      c.bursting = single;
      c.untimed = kWarmup;
      c.untimed_seconds = 0;
      c.timed = kSamples;
      return c.last = single;
    }
  }
  const double kept = c.variant[c.last].median(), other = c.variant[!c.last].median();
  if (other < 0.9 * kept) c.last = !c.last;
  return c.last;
}

void VariantTuner::record(Kind kind, std::size_t bytes, bool single_copy, double seconds, double now) {
  SizeClass& c = size_class(kind, bytes);
  if (c.untimed > 0 && single_copy == c.bursting) {
    c.untimed_seconds += seconds;
    c.untimed = c.untimed_seconds >= kWarmupSeconds ? 0 : c.untimed - 1;
    return;
  }
  if (c.timed > 0 && single_copy == c.bursting) --c.timed;
  Times& t = c.variant[single_copy];
  t.last[t.next] = seconds;
  t.next = (t.next + 1) % kSamples;
  t.count = std::min(t.count + 1, kSamples);
  t.at = now;
}

}  // namespace distml::engine
