import json, sys, statistics as st
def load(fs):
    return [json.load(open(f)) for f in fs]
def fmt_size(b):
    if b == 0: return "0 B"
    for u, s in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if b >= u and b % u == 0: return f"{b // u} {s}"
    return f"{b} B"
def table(before, after, P):
    out = []
    def idx(runs):
        d = {}
        for r in runs:
            for row in r["rows"]:
                d.setdefault((row["collective"], row["bytes"], row["implementation"]), []).append(row)
        return d
    B, A = idx(before), idx(after)
    colls = []
    for r in after[0]["rows"]:
        if r["collective"] not in colls: colls.append(r["collective"])
    out.append(f"| collective | size | MPI us (after) | before: auto per run | before median | after: auto per run | after median | after: path |")
    out.append("|---|---:|---:|---|---:|---|---:|---|")
    for c in colls:
        sizes = sorted({k[1] for k in A if k[0] == c})
        for s in sizes:
            mpi = st.median(r["time_s"] for r in A[(c, s, "mpi4py")]) * 1e6
            a = [r["ratio"] for r in A.get((c, s, "distml:auto"), [])]
            b = [r["ratio"] for r in B.get((c, s, "distml:auto"), [])]
            path = ",".join(sorted({r["resolved"] for r in A.get((c, s, "distml:auto"), [])}))
            bs = " / ".join(f"{x:.2f}" for x in b) if b else ""
            bm = f"{st.median(b):.2f}" if b else ""
            out.append(f"| {c} | {fmt_size(s)} | {mpi:.1f} | {bs} | {bm} | {' / '.join(f'{x:.2f}' for x in a)} | {st.median(a):.2f} | {path} |")
    return "\n".join(out)
def loads(runs):
    return "; ".join(f"{r['loadavg_before'][0]}/{r['loadavg_after'][0]}" for r in runs)
if __name__ == "__main__":
    P = sys.argv[1]
    n = int(sys.argv[2])
    files = sys.argv[3:]
    before, after = load(files[:n]), load(files[n:])
    if before: print(f"before: load (1-min) before/after each run: {loads(before)}")
    print(f"after: load (1-min) before/after each run: {loads(after)}\n")
    print(table(before, after, P))
