"""busbw against size from result files, one panel per collective."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence


from .common import BASELINE, COLLECTIVES, format_size


def plot(paths: Sequence[str], out: str, title: Optional[str] = None) -> str:
    """Draws busbw against size from result files: one panel per collective,
    one line per (file, implementation), each file's memcpy ceiling dashed.

    Returns ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = []
    for p in paths:
        with open(p) as f:
            results.append(json.load(f))
    collectives = [c for c in COLLECTIVES if any(r["collective"] == c for res in results for r in res["rows"])]
    if not collectives:
        raise SystemExit("distml-bench plot: no rows in " + ", ".join(paths))
    ncols = min(3, len(collectives))
    nrows = -(-len(collectives) // ncols)
    width, height = (6.0, 4.4) if len(collectives) > 1 else (9.0, 6.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "v", "D", "x", "*"]
    # One colour and marker per implementation across all panels and files.
    impl_index: Dict[str, int] = {}
    for res in results:
        for r in res["rows"]:
            if r["implementation"] != BASELINE:
                impl_index.setdefault(r["implementation"], len(impl_index))
    for ax, coll in zip(axes.flat, collectives):
        for fi, res in enumerate(results):
            label_p = f"P={res['machine']['P']}" if len(results) > 1 else ""
            rows = [r for r in res["rows"] if r["collective"] == coll]
            for impl in dict.fromkeys(r["implementation"] for r in rows):
                pts = sorted((r["bytes"], r["busbw_GBps"]) for r in rows if r["implementation"] == impl)
                k = impl_index.get(impl, len(impl_index))
                color = "black" if impl == BASELINE else f"C{k % 10}"
                ax.plot([x for x, _ in pts], [y for _, y in pts], linestyle=styles[fi % len(styles)],
                        marker=markers[k % len(markers)], markersize=3.5, color=color,
                        linewidth=2.0 if impl == BASELINE else 1.3,
                        label=" ".join(s for s in (label_p, impl) if s))
            mc = res.get("memcpy")
            if mc:
                ax.axhline(mc["bandwidth_GBps"], color="grey", linestyle=styles[fi % len(styles)], linewidth=1,
                           label=" ".join(s for s in (label_p, f"memcpy {mc['bandwidth_GBps']:.1f} GB/s") if s))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(coll)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.grid(True, which="major", alpha=0.3)
        lo = min(r["bytes"] for res in results for r in res["rows"] if r["collective"] == coll)
        hi = max(r["bytes"] for res in results for r in res["rows"] if r["collective"] == coll)
        ticks = [8 ** k for k in range(1, 11) if lo / 2 <= 8 ** k <= hi * 2] or [lo]
        ax.set_xticks(ticks)
        ax.set_xticklabels([format_size(t).replace(" ", "") for t in ticks], rotation=45, fontsize=7)
        ax.legend(fontsize=6.5, loc="lower right")
    for ax in list(axes.flat)[len(collectives):]:
        ax.set_visible(False)
    if title is None:
        mi = results[0]["machine"]
        ps = ", ".join(f"P={r['machine']['P']}" for r in results)
        title = (f"distml vs {BASELINE} ({' '.join(mi['mpi_library'].split())}), {results[0]['config']['dtype']}, {ps}; "
                 f"{mi['cpu_model']}, {mi['cores']} cores")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    d = os.path.dirname(out)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
