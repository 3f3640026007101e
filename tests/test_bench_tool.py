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
