"""The benchmark's bookkeeping: the memory-bandwidth bound of allreduce and
the tables made from sweep files (the sweep itself runs under mpiexec in
bench/)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distml import bench


def _row(impl, nbytes, time_s, P=2, collective="allreduce"):
    return {"collective": collective, "implementation": impl, "algorithm": "", "bytes": nbytes,
            "time_s": time_s, "P": P, "ratio": None, "busbw_GBps": 0.0}


def test_memory_bound_factors():
    assert bench.memory_bound_factor("distml:auto", 2) == 2.5
    assert bench.memory_bound_factor(bench.BASELINE, 4) == 2.5
    # In place on shared arrays: read n, write n/P, copy (P-1)/P n in.
    assert bench.memory_bound_factor("distml:shared-buffer", 2) == pytest.approx(1.25)
    assert bench.memory_bound_factor("distml:shared-buffer", 4) == pytest.approx(1.375)
    assert bench.memory_bound_factor("mpi4py:in-place", 2) is None
    assert bench.memory_bound_factor("distml:auto", 1) is None


def test_memory_bound_factors_other_collectives():
    # One copy of every block that changes rank.
    for P in (2, 4):
        assert bench.memory_bound_factor("distml:auto", P, "allgather") == 1.0
        assert bench.memory_bound_factor(bench.BASELINE, P, "alltoall") == 1.0
        assert bench.memory_bound_factor("distml:auto", P, "reduce_scatter") == pytest.approx((1 + 1 / P) / 2)
        assert bench.memory_bound_factor("distml:auto", P, "reduce") == pytest.approx((1 + 1 / P) / 2)
        assert bench.memory_bound_factor("distml:auto", P, "broadcast") == pytest.approx((P - 1) / P)
        assert bench.memory_bound_factor("distml:auto", P, "barrier") is None
    rows = [_row(bench.BASELINE, 10 ** 9, 2.0, collective="allgather"),
            _row("distml:auto", 10 ** 9, 0.5, collective="reduce_scatter")]
    bench.add_memory_bound(rows, 1e9, cores=2)
    assert rows[0]["memory_bound_s"] == pytest.approx(1.0)
    assert rows[0]["max_ratio_at_bound"] == pytest.approx(2.0)
    assert rows[1]["of_memory_bound"] == pytest.approx(0.75 / 0.5)


def test_memory_bound_from_the_size_memcpy():
    # A row that carries a memcpy of its bytes timed on every rank at once
    # takes that time as the memcpy (no stretch for ranks sharing cores).
    rows = [_row(bench.BASELINE, 1 << 24, 4e-3, P=4, collective="alltoall"),
            _row("distml:auto", 1 << 24, 2e-3, P=4, collective="reduce_scatter")]
    rows[0]["size_memcpy_s"] = 3e-3
    rows[1]["size_memcpy_s"] = 3e-3
    bench.add_memory_bound(rows, 1e12, cores=2)
    assert rows[0]["memory_bound_s"] == pytest.approx(3e-3)
    assert rows[0]["max_ratio_at_bound"] == pytest.approx(4 / 3)
    assert rows[1]["memory_bound_s"] == pytest.approx(3e-3 * (1 + 1 / 4) / 2)


def test_memory_bound_counts_the_cores_a_short_copy_waits_for():
    # Four ranks on two cores, each copy 1 ms of CPU: the node needs 2 ms
    # for the four, though each rank's wall time says 1.1 ms. With as many
    # cores as ranks the wall time stands.
    for cores, want in ((2, 2e-3), (4, 1.1e-3)):
        rows = [_row(bench.BASELINE, 1 << 20, 4e-3, P=4, collective="alltoall")]
        rows[0].update(size_memcpy_s=1.1e-3, size_memcpy_cpu_s=1e-3)
        bench.add_memory_bound(rows, 1e12, cores=cores)
        assert rows[0]["memory_bound_s"] == pytest.approx(want)
    # A copy the scheduler sliced already shows the sharing in its wall time.
    rows = [_row(bench.BASELINE, 1 << 24, 9e-3, P=4, collective="alltoall")]
    rows[0].update(size_memcpy_s=5e-3, size_memcpy_cpu_s=2e-3)
    bench.add_memory_bound(rows, 1e12, cores=2)
    assert rows[0]["memory_bound_s"] == pytest.approx(5e-3)


def test_private_bound_takes_the_cheaper_way_across():
    P, memcpy = 4, 1e-3
    # Kernel copy slower than two memcpys: peers' blocks cross by two memcpys.
    # Between: by the kernel. Faster than one memcpy: every block by the kernel.
    for kernel, want in ((3e-3, memcpy / P + (P - 1) / P * 2 * memcpy),
                         (1.5e-3, memcpy / P + (P - 1) / P * 1.5e-3),
                         (0.5e-3, 0.5e-3)):
        rows = [_row(bench.BASELINE, 1 << 20, 4e-3, P=P, collective="alltoall"),
                _row("distml:auto", 1 << 20, 2e-3, P=P, collective="alltoall")]
        for r in rows:
            r.update(size_memcpy_s=memcpy, size_kernel_copy_s=kernel)
        bench.add_memory_bound(rows, 1e12, cores=P)
        mpi, auto = rows
        assert mpi["private_bound_s"] == pytest.approx(want)
        assert mpi["max_ratio_at_private_bound"] == pytest.approx(4e-3 / want)
        assert auto["of_private_bound"] == pytest.approx(want / 2e-3)
        assert "max_ratio_at_private_bound" not in auto
        assert mpi["memory_bound_s"] == pytest.approx(memcpy)
    # Only alltoall gets it, and only rows that timed the kernel's copy.
    rows = [_row(bench.BASELINE, 1 << 20, 4e-3, P=2, collective="reduce_scatter"),
            _row(bench.BASELINE, 1 << 20, 4e-3, P=2, collective="allgather"),
            _row(bench.BASELINE, 1 << 20, 4e-3, P=2, collective="alltoall")]
    rows[0].update(size_memcpy_s=1e-3, size_kernel_copy_s=1e-3)
    rows[1].update(size_memcpy_s=1e-3, size_kernel_copy_s=1e-3)
    rows[2].update(size_memcpy_s=1e-3)
    bench.add_memory_bound(rows, 1e12, cores=2)
    assert not any("private_bound_s" in r for r in rows)


def test_size_memcpy_times_the_kernel_copy():
    from distml.bench.sweep import SizeMemcpy

    m = SizeMemcpy(3 << 20, 2)
    for a in m.src:
        a[:] = np.arange(a.size) % 251
    m.call()(0)
    assert np.array_equal(m.dst[0], m.src[0]) and len(m.cpu_s) == 1 and m.cpu_s[0] > 0
    kernel = m.kernel_call()
    if kernel is None:
        pytest.skip("process_vm_writev is refused here")
    m.dst[1][:] = 0
    kernel(1)
    assert np.array_equal(m.dst[1], m.src[1]) and len(m.kernel_cpu_s) == 1


def test_add_memory_bound():
    gb = 1e9
    rows = [_row(bench.BASELINE, 10 ** 9, 5.0), _row("distml:auto", 10 ** 9, 2.0),
            _row("distml:shared-buffer", 10 ** 9, 2.0), _row("mpi4py:in-place", 10 ** 9, 1.0),
            _row(bench.BASELINE, 10 ** 9, 1.0, collective="barrier")]
    bench.add_memory_bound(rows, 1 * gb, cores=2)  # 1 GB/s: a memcpy of the message takes 1 s
    mpi, auto, shared, inplace, other = rows
    assert mpi["memory_bound_s"] == pytest.approx(2.5)
    assert mpi["of_memory_bound"] == pytest.approx(0.5)
    assert mpi["max_ratio_at_bound"] == pytest.approx(2.0)
    assert auto["of_memory_bound"] == pytest.approx(1.25)
    assert "max_ratio_at_bound" not in auto
    assert shared["memory_bound_s"] == pytest.approx(1.25)
    assert "memory_bound_s" not in inplace and "memory_bound_s" not in other

    # Four ranks on two cores: two ranks' copies share each core.
    rows = [_row(bench.BASELINE, 10 ** 9, 10.0, P=4)]
    bench.add_memory_bound(rows, 1 * gb, cores=2)
    assert rows[0]["memory_bound_s"] == pytest.approx(5.0)


def test_bound_table(tmp_path):
    rows = [_row(bench.BASELINE, 1 << 20, 4e-4), _row("distml:auto", 1 << 20, 2e-4)]
    bench.add_memory_bound(rows, 1e10, cores=2)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"machine": {"P": 2}, "rows": rows}))
    table = bench.markdown_table([str(path)], "allreduce", 1, None, "bound")
    want_mpi = 2.5 * (1 << 20) / 1e10 / 4e-4
    assert f"| 1 MiB | {want_mpi:.2f} | {2 * want_mpi:.2f} |" in table


# The machine's phase (distml.bench.machine.phase_reading, sweep.phase_fields).

def _two_cpus():
    cpus = bench.machine.phase_cpus()
    if cpus is None:
        pytest.skip("this process may run on one CPU only")
    return cpus


def test_cross_core_times_the_three_copies():
    from distml import _core

    a, b = _two_cpus()
    r = _core.cross_core(a, b, 64 << 10, 3)
    assert set(r) == {"local_s", "handoff_s", "rewrite_s"}
    for key, value in r.items():
        assert 0 < value < 1, (key, value)  # 64 KiB: microseconds, finite (every round measured)


def test_cross_core_refuses_what_it_cannot_measure():
    from distml import _core

    a, b = _two_cpus()
    with pytest.raises(ValueError, match="must differ"):
        _core.cross_core(a, a, 4096, 1)
    import os
    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match=f"CPU {outside} is not one this process may run on"):
        _core.cross_core(a, outside, 4096, 1)
    with pytest.raises(ValueError, match="bytes"):
        _core.cross_core(a, b, 0, 1)
    with pytest.raises(ValueError, match="reps"):
        _core.cross_core(a, b, 4096, 0)


def test_phase_fields_split_rounds_by_their_reading():
    from distml.bench.sweep import phase_fields

    # Rounds 0-2 fast (readings 5-6), 3-4 slow (20, 12: the threshold itself
    # counts as slow), 5 not read.
    readings = np.array([5.0, 6.0, 5.5, 20.0, 12.0, np.nan])
    impl = np.array([1.0, 1.0, 1.0, 4.0, 4.0, 9.0])
    base = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 9.0])
    got = phase_fields(impl, base, readings, 12.0)
    assert got["slow_share"] == pytest.approx(2 / 5)
    assert got["phase_median"] == pytest.approx(6.0)
    assert got["time_fast_s"] == 1.0 and got["time_slow_s"] == 4.0
    assert got["ratio_fast"] == pytest.approx(2.0) and got["ratio_slow"] == pytest.approx(0.5)
    # The baseline's own row: times, no ratios; a phase without rounds: no fields.
    own = phase_fields(base[:3], None, readings[:3], 12.0)
    assert "ratio_fast" not in own and "time_slow_s" not in own and own["slow_share"] == 0
    assert phase_fields(impl, base, np.full(6, np.nan), 12.0) == {}


def test_time_interleaved_reads_the_phase_between_rounds():
    from mpi4py import MPI

    from distml.bench import sweep

    calls = []

    def phase():
        calls.append(len(log))
        return float(len(calls))

    log = []
    iters = 2 * sweep.PHASE_READINGS + 1  # read every 3rd round
    times, readings = sweep.time_interleaved_phased(MPI.COMM_SELF, [log.append, log.append], iters, 2, phase)
    assert times.shape == (2, iters) and readings.shape == (iters,)
    every = 3
    # Read before rounds 0, 3, 6, ...: after the warm-up's 4 calls and then
    # after every 3 rounds of 2 calls; never between a round's calls.
    assert calls == [4 + 2 * i for i in range(0, iters, every)]
    assert list(readings) == [1.0 + i // every for i in range(iters)]
    none = sweep.time_interleaved_phased(MPI.COMM_SELF, [log.append], 4, 0, lambda: None)[1]
    assert np.isnan(none).all()
    assert sweep.time_interleaved_phased(MPI.COMM_SELF, [log.append], 4, 0)[1] is None


def test_phase_table(tmp_path):
    rows = [dict(_row(bench.BASELINE, 1 << 20, 4e-4), slow_share=0.25),
            dict(_row("distml:auto", 1 << 20, 2e-4), slow_share=0.25, ratio_fast=2.5, ratio_slow=0.75),
            dict(_row("distml:auto", 2 << 20, 2e-4), slow_share=0.0, ratio_fast=1.5),
            _row("distml:auto", 4 << 20, 2e-4)]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"machine": {"P": 2}, "rows": rows}))
    table = bench.markdown_table([str(path)], "allreduce", 1, None, "phase")
    assert "| 1 MiB | 2.50 / 0.75 (25%) |" in table
    assert "| 2 MiB | 1.50 / - (0%) |" in table
    assert "| 4 MiB | - |" in table


@pytest.mark.mpi
@pytest.mark.parametrize("no_phase", [False, True])
def test_sweep_rows_carry_their_phase(tmp_path, no_phase):
    from mpirun import launch

    out = tmp_path / "sweep.json"
    args = ["-m", "distml.bench", "--collectives", "allreduce,allgather", "--algorithms", "auto",
            "--sizes", "4K,1M", "--iters", "40", "--min-iters", "20", "--no-memcpy", "--no-extras", "--quiet",
            "--out", str(out)] + (["--no-phase"] if no_phase else [])
    run = launch(2, args, timeout=240)
    assert not run.hung and run.returncode == 0, run.describe()
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 8  # 2 collectives x 2 sizes x (MPI, distml)
    if no_phase:
        assert result["config"]["phase"] is None
        assert not any("slow_share" in r for r in rows)
        return
    if bench.machine.phase_cpus() is None:
        pytest.skip("this process may run on one CPU only: the sweep reads no phase")
    assert result["config"]["phase"]["slow_ratio"] == bench.machine.SLOW_PHASE_RATIO
    for r in rows:
        assert 0 <= r["slow_share"] <= 1 and r["phase_median"] > 0, r
        phases = [p for p in ("fast", "slow") if f"time_{p}_s" in r]
        # A phase has figures exactly where it has rounds.
        assert ("fast" in phases) == (r["slow_share"] < 1) and ("slow" in phases) == (r["slow_share"] > 0), r
        if r["implementation"] == bench.BASELINE:
            assert "ratio_fast" not in r and "ratio_slow" not in r
        elif len(phases) == 1:
            # Every round in one phase: that phase's ratio is the row's.
            assert r[f"ratio_{phases[0]}"] == pytest.approx(r["ratio"]), r
