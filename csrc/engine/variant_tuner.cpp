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

std::uint32_t VariantTuner::key(Kind kind, std::size_t bytes) {
  std::uint32_t log2 = 0;
  while (log2 < 63 && (std::size_t{2} << log2) <= bytes) ++log2;
  return (static_cast<std::uint32_t>(kind) << 8) | log2;
}

VariantTuner::SizeClass& VariantTuner::size_class(Kind kind, std::size_t bytes) { return classes_[key(kind, bytes)]; }

double VariantTuner::median(Kind kind, std::size_t bytes, Variant variant) const {
  const auto it = classes_.find(key(kind, bytes));
  if (it == classes_.end()) return -1;
  const Times& t = it->second.variant[static_cast<int>(variant)];
  return t.count ? t.median() : -1;
}

void VariantTuner::SizeClass::burst(int v) {
  bursting = last = v;
  untimed = kWarmup;
  untimed_seconds = 0;
  timed = kSamples;
}

Variant VariantTuner::choose(Kind kind, std::size_t bytes, double now, unsigned offered) {
  SizeClass& c = size_class(kind, bytes);
  const auto on_offer = [&](int v) { return (offered >> v & 1u) != 0; };
  if ((c.untimed > 0 || c.timed > 0) && on_offer(c.bursting)) return static_cast<Variant>(c.last = c.bursting);
  // kPeriodCalls calls of the fastest known, which is what runs between looks.
  double fastest = 0;
  for (const Times& t : c.variant) {
    if (t.count && (fastest == 0 || t.median() < fastest)) fastest = t.median();
  }
  const double period = std::max(explore_seconds_, kPeriodCalls * fastest);
  // The single copy first: the default before anything is known.
  constexpr Variant kOrder[] = {Variant::kSingleCopy, Variant::kStaged, Variant::kStagedStreaming};
  for (const Variant v : kOrder) {
    const Times& t = c.variant[static_cast<int>(v)];
    if (on_offer(static_cast<int>(v)) && (t.count < kSamples || now - t.at > period)) {
      c.burst(static_cast<int>(v));
      return v;
    }
  }
  // The first variant a size class tried ran on whatever was cold then (a
  // new size's arrays are touched for the first time): it gets one more
  // look once the others have had theirs.
  if (c.first_pass) {
    c.first_pass = false;
    for (const Variant v : kOrder) {
      if (on_offer(static_cast<int>(v))) {
        c.burst(static_cast<int>(v));
        return v;
      }
    }
  }
  // (A size class whose calls straddle a size setting may see different
  // offers; a variant not on offer now is never kept.)
  int best = -1;
  for (int v = 0; v < kVariants; ++v) {
    if (on_offer(v) && (best < 0 || c.variant[v].median() < c.variant[best].median())) best = v;
  }
  if (!on_offer(c.last) || (best != c.last && c.variant[best].median() < 0.9 * c.variant[c.last].median()))
    c.burst(best);
  return static_cast<Variant>(c.last);
}

void VariantTuner::record(Kind kind, std::size_t bytes, Variant variant, double seconds, double now) {
  SizeClass& c = size_class(kind, bytes);
  const int v = static_cast<int>(variant);
  if (c.untimed > 0 && v == c.bursting) {
    c.untimed_seconds += seconds;
    c.untimed = c.untimed_seconds >= kWarmupSeconds ? 0 : c.untimed - 1;
    return;
  }
  if (c.timed > 0 && v == c.bursting) --c.timed;
  Times& t = c.variant[v];
  t.last[t.next] = seconds;
  t.next = (t.next + 1) % kSamples;
  t.count = std::min(t.count + 1, kSamples);
  t.at = now;
}

}  // namespace distml::engine
