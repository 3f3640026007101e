"""Other libraries' allreduce, timed beside distml's in the sweep (``--peers``).

A peer is an allreduce a Python user on one CPU node could pick instead of
distml's. Each is set up once per sweep on all ranks, then called in place
on the sweep's own output buffers (the buffers ``distml:in-place`` and
``mpi4py:in-place`` use), through ``torch.from_numpy`` so no copy is timed:

- ``deepspeed``: DeepSpeed's CPU shared-memory allreduce
  (``torch.ops.deepspeed.inference_all_reduce_``), its extension built by
  torch's cpp_extension the first time it is loaded (needs ninja and a C++
  compiler; a few minutes on two cores; cached in ``TORCH_EXTENSIONS_DIR``,
  by default ``~/.cache/torch_extensions``). It is initialised with the MPI
  rank and size, with ``LOCAL_SIZE`` equal to the size, which is what makes
  it take the shared-memory path: so the peer is offered on one node only.
  Each rank maps a segment of its own in /dev/shm that DeepSpeed never
  unlinks; :meth:`DeepSpeedShm.close` removes them, and so does an exit
  handler if the sweep fails first. Its kernels run OpenMP loops: the
  commands in bench/results/peers.md set ``OMP_NUM_THREADS=1`` (one core per
  rank on this machine), as DeepSpeed's own launcher does when it binds
  cores to ranks.
- ``gloo``: ``torch.distributed.all_reduce`` on a gloo process group that
  meets at a TCP port on 127.0.0.1 chosen by rank 0.

- ``oneccl``: oneCCL's allreduce (``ccl::allreduce``, float32 sum in
  place) through a small extension (``_oneccl_peer.cpp``) built at first use
  by torch's cpp_extension against the CPU archive of the ``oneccl-devel``
  wheel. The oneccl wheels' shared libraries are SYCL builds that crash
  creating a communicator without a GPU driver, and the devel wheel's
  dependencies would install Intel MPI's ``libmpi.so.12`` over MPICH's, so
  this peer is not in the ``[peers]`` extra: install it into a prefix of its
  own and name that prefix in ``DISTML_ONECCL_PREFIX``::

      pip install --no-deps --prefix .venv/oneccl oneccl-devel==2021.17.2 intel-cmplr-lib-rt==2026.2.0
      apt-get install libhwloc-dev

  It runs over MPI (``CCL_ATL_TRANSPORT=mpi``: libfabric is not on the
  index) with ``CCL_WORKER_OFFLOAD=0`` and ``CCL_YIELD=sched_yield`` unless
  the environment says otherwise: with its default progress thread that
  spins, a call costs tens of milliseconds when ranks share cores.

Everything here must be called on all ranks alike. Whether a peer can run
is agreed across ranks before anything is set up, so a rank that lacks a
package makes every rank skip the peer (with the reason) rather than leave
its peers in a collective.

Run ``mpiexec -n P python -m distml.bench.peers`` to check the peers'
results against numpy's and distml's (exit status 1 on a mismatch).
"""

from __future__ import annotations

import abc
import argparse
import atexit
import glob
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

PEERS = ("deepspeed", "gloo", "oneccl")

# What the sweep's table calls each peer's row.
LABELS = {"deepspeed": "deepspeed:shm", "gloo": "torch:gloo", "oneccl": "oneccl"}

# torch's dtype for each numpy dtype a peer may reduce; DeepSpeed's shm
# allreduce takes float32, float16 and bfloat16 and silently leaves any
# other tensor as it was, so it is refused those.
_DEEPSPEED_DTYPES = ("float32", "float16")


class PeerUnavailable(Exception):
    """This rank cannot run the peer; the message says why."""


class Peer(abc.ABC):
    """One library's allreduce. ``open`` sets it up (on all ranks),
    ``call`` returns the timed call over a list of buffers, ``close``
    releases what ``open`` took (on all ranks)."""

    name = ""

    @abc.abstractmethod
    def check_local(self, dtype: np.dtype, comm: Any) -> None:
        """Raises PeerUnavailable if this rank cannot run the peer; no
        communication, so it can run before the ranks agree."""

    @abc.abstractmethod
    def open(self, mcomm: Any) -> None: ...

    @abc.abstractmethod
    def call(self, buffers: Sequence[np.ndarray]) -> Callable[[int], Any]: ...

    @abc.abstractmethod
    def close(self, mcomm: Any) -> None: ...


def _load_everywhere(mcomm: Any, load: Callable[[], Any]) -> Any:
    """``load()`` on rank 0 first (a build, if the extension is not cached
    yet), then on the others; if rank 0's fails, every rank raises instead
    of its peers waiting for it."""
    module, error = None, ""
    if mcomm.Get_rank() == 0:
        try:
            module = load()
        except Exception as e:  # a failed build: tell the others before raising
            error = f"{type(e).__name__}: {e}"
    error = mcomm.bcast(error, root=0)
    if error:
        raise RuntimeError(f"building the peer's extension failed on rank 0: {error[-4000:]}")
    if module is None:
        module = load()
    return module


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise PeerUnavailable(f"torch is not installed ({e}); pip install '.[peers]'") from None
    return torch


class DeepSpeedShm(Peer):
    """DeepSpeed's CPU shared-memory allreduce, initialised with the MPI rank
    and size."""

    name = "deepspeed"
    # Names DeepSpeed gives its segments: a fixed prefix, the uid, then the
    # MASTER_ADDR and MASTER_PORT it reads at initialisation, then the rank.
    # The sweep sets both to a token of its own, so its segments cannot be
    # confused with another job's.
    _PREFIX = "deepspeed_allreduce_buffer"

    def __init__(self) -> None:
        self.token = ""
        self.rank = -1
        self.op: Any = None

    def check_local(self, dtype: np.dtype, comm: Any) -> None:
        _import_torch()
        try:
            import deepspeed  # noqa: F401  (only that it is there; loading comes later)
        except ImportError as e:
            raise PeerUnavailable(f"deepspeed is not installed ({e}); pip install '.[peers]'") from None
        except Exception as e:  # DeepSpeed probes accelerators at import
            raise PeerUnavailable(f"deepspeed fails to import: {type(e).__name__}: {e}") from None
        if str(dtype) not in _DEEPSPEED_DTYPES:
            raise PeerUnavailable(f"DeepSpeed's shm allreduce takes {', '.join(_DEEPSPEED_DTYPES)} here, not {dtype}")
        if comm.size > 1 and comm.shared_memory != "one node":
            raise PeerUnavailable("DeepSpeed's shm allreduce needs every rank on one node")

    def _paths(self) -> List[str]:
        return glob.glob(os.path.join("/dev/shm", f"{self._PREFIX}_{os.getuid()}_distml_{self.token}_*"))

    def _own_path(self) -> str:
        return os.path.join("/dev/shm", f"{self._PREFIX}_{os.getuid()}_distml_{self.token}_{self.rank}")

    def _remove_own(self) -> None:
        try:
            os.unlink(self._own_path())
        except FileNotFoundError:
            pass

    def open(self, mcomm: Any) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no GPU probing
        torch = _import_torch()
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        self.rank, size = mcomm.Get_rank(), mcomm.Get_size()
        self.token = mcomm.bcast(f"{os.getpid()}x{os.urandom(3).hex()}" if self.rank == 0 else None, root=0)
        module = _load_everywhere(mcomm, lambda: ShareMemCommBuilder().load(verbose=False))
        saved = {k: os.environ.get(k) for k in ("LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        os.environ.update(LOCAL_SIZE=str(size), MASTER_ADDR="distml", MASTER_PORT=self.token)
        atexit.register(self._remove_own)
        try:
            # Each rank creates its segment, then opens every peer's (it
            # retries until they exist).
            module.initialize(size, self.rank)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.op = torch.ops.deepspeed.inference_all_reduce_
        mcomm.Barrier()

    def call(self, buffers: Sequence[np.ndarray]) -> Callable[[int], Any]:
        import torch

        tensors = [torch.from_numpy(b) for b in buffers]
        op, n = self.op, len(tensors)
        return lambda i: op(tensors[i % n])

    def close(self, mcomm: Any) -> None:
        # Every rank maps every peer's segment: remove them only when all
        # ranks are done (the mappings stay valid after the unlink).
        mcomm.Barrier()
        self._remove_own()
        mcomm.Barrier()
        if self.rank == 0:
            for path in self._paths():  # a rank that died before its unlink
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


class Gloo(Peer):
    """torch.distributed's allreduce on a gloo process group."""

    name = "gloo"

    def __init__(self) -> None:
        self.group: Any = None

    def check_local(self, dtype: np.dtype, comm: Any) -> None:
        torch = _import_torch()
        if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
            raise PeerUnavailable("this torch build has no gloo backend")
        try:
            torch.from_numpy(np.zeros(1, dtype))
        except TypeError as e:
            raise PeerUnavailable(f"torch cannot view {dtype} arrays: {e}") from None

    def open(self, mcomm: Any) -> None:
        import socket

        import torch.distributed as dist

        rank, size = mcomm.Get_rank(), mcomm.Get_size()
        port = None
        if rank == 0:
            with socket.socket() as s:  # a free port, released for the store to take
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        port = mcomm.bcast(port, root=0)
        if dist.is_initialized():
            self.group = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
            self.group = dist.group.WORLD
        mcomm.Barrier()

    def call(self, buffers: Sequence[np.ndarray]) -> Callable[[int], Any]:
        import torch
        import torch.distributed as dist

        tensors = [torch.from_numpy(b) for b in buffers]
        group, n = self.group, len(tensors)
        return lambda i: dist.all_reduce(tensors[i % n], group=group)

    def close(self, mcomm: Any) -> None:
        import torch.distributed as dist

        mcomm.Barrier()
        if self.group is dist.group.WORLD:
            dist.destroy_process_group()
        else:
            dist.destroy_process_group(self.group)
        self.group = None


class OneCCL(Peer):
    """oneCCL's allreduce over its MPI transport, from the oneccl-devel
    wheel's CPU archive (see the module docstring)."""

    name = "oneccl"
    # oneCCL reads these at its initialisation; the environment wins.
    ENV = {"CCL_ATL_TRANSPORT": "mpi", "CCL_WORKER_OFFLOAD": "0", "CCL_YIELD": "sched_yield"}

    def __init__(self) -> None:
        self.module: Any = None

    @staticmethod
    def prefix() -> str:
        # Absolute: the extension is linked in torch's build directory, where
        # a prefix relative to the caller's directory names nothing.
        return os.path.abspath(os.environ.get("DISTML_ONECCL_PREFIX", os.path.join(sys.prefix, "oneccl")))

    def check_local(self, dtype: np.dtype, comm: Any) -> None:
        _import_torch()
        pre = self.prefix()
        archive = os.path.join(pre, "lib", "ccl", "cpu", "lib", "libccl.a")
        if not os.path.isfile(archive):
            raise PeerUnavailable(f"no oneCCL CPU archive at {archive}: pip install --no-deps --prefix {pre} "
                                  "oneccl-devel==2021.17.2 intel-cmplr-lib-rt==2026.2.0 (or set DISTML_ONECCL_PREFIX)")
        if not os.path.isfile(os.path.join(pre, "lib", "libirc.so")):
            raise PeerUnavailable(f"no Intel compiler runtime in {pre}/lib: pip install --no-deps --prefix {pre} "
                                  "intel-cmplr-lib-rt==2026.2.0")
        if not glob.glob("/usr/lib/*/libhwloc.so") and not glob.glob("/usr/lib/libhwloc.so"):
            raise PeerUnavailable("oneCCL's archive needs hwloc: apt-get install libhwloc-dev")
        if str(dtype) != "float32":
            raise PeerUnavailable(f"the oneCCL peer sums float32 only, not {dtype}")

    def _load(self) -> Any:
        from torch.utils.cpp_extension import load

        pre = self.prefix()
        lib = os.path.join(pre, "lib")
        return load(name="distml_oneccl_peer",
                    sources=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "_oneccl_peer.cpp")],
                    extra_include_paths=[os.path.join(pre, "include")],
                    extra_ldflags=[os.path.join(lib, "ccl", "cpu", "lib", "libccl.a"), f"-L{lib}",
                                   f"-Wl,-rpath,{lib}", "-lhwloc", "-lirc", "-limf", "-lsvml", "-lintlc",
                                   "-lirng", "-ldl", "-lrt"],
                    verbose=False)

    def open(self, mcomm: Any) -> None:
        for k, v in self.ENV.items():
            os.environ.setdefault(k, v)
        rank, size = mcomm.Get_rank(), mcomm.Get_size()
        self.module = _load_everywhere(mcomm, self._load)
        address = self.module.main_address() if rank == 0 else None
        address = mcomm.bcast(address, root=0)
        self.module.connect(size, rank, address)
        mcomm.Barrier()

    def call(self, buffers: Sequence[np.ndarray]) -> Callable[[int], Any]:
        for b in buffers:
            if b.dtype != np.float32 or not b.flags.c_contiguous:
                raise ValueError("the oneCCL peer takes C-contiguous float32 arrays")
        keep = list(buffers)  # the arrays outlive the addresses taken from them
        targets = [(b.ctypes.data, b.size) for b in keep]
        run, n = self.module.allreduce, len(targets)
        return lambda i: (run(*targets[i % n]), keep)

    def close(self, mcomm: Any) -> None:
        mcomm.Barrier()
        self.module.disconnect()


_CLASSES = {"deepspeed": DeepSpeedShm, "gloo": Gloo, "oneccl": OneCCL}


def open_peers(names: Sequence[str], dtype: np.dtype, comm: Any, mcomm: Any) -> Tuple[List[Peer], Dict[str, str]]:
    """Sets up the named peers on all ranks: (the peers that run, {peer:
    reason} for those that cannot run on some rank). Must be called on all
    ranks with the same names."""
    unknown = [n for n in names if n not in _CLASSES]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; expected some of {', '.join(PEERS)}")
    peers: List[Peer] = []
    refused: Dict[str, str] = {}
    for name in names:
        peer = _CLASSES[name]()
        why = ""
        try:
            peer.check_local(dtype, comm)
        except PeerUnavailable as e:
            why = f"rank {mcomm.Get_rank()}: {e}"
        reasons = [r for r in mcomm.allgather(why) if r]
        if reasons:
            refused[name] = reasons[0]
            continue
        peer.open(mcomm)
        peers.append(peer)
    return peers, refused


def close_peers(peers: Sequence[Peer], mcomm: Any) -> None:
    """Releases what open_peers set up (on all ranks)."""
    for peer in reversed(peers):
        peer.close(mcomm)


def check(names: Sequence[str], counts: Sequence[int]) -> int:
    """Each peer's allreduce against numpy's sum and distml's, float32, at
    ``counts`` elements. Prints one line per (peer, count) on rank 0;
    returns 0 if every result matched everywhere, 1 if one did not, 2 if a
    peer could not run."""
    from mpi4py import MPI

    import distml

    world = MPI.COMM_WORLD
    mcomm = world.Dup()
    comm = distml.Communicator(world)
    rank, size = world.Get_rank(), world.Get_size()
    dtype = np.dtype(np.float32)
    peers, refused = open_peers(names, dtype, comm, mcomm)
    status = 2 if refused else 0
    lines = [f"peer {n}: skipped: {why}" for n, why in refused.items()]
    for peer in peers:
        for count in counts:
            # Small integers, different on every rank and element: float32
            # sums them exactly in any order, so results compare with ==.
            rng = np.random.default_rng(1000 * count + rank)
            x = rng.integers(-1000, 1000, count).astype(dtype)
            want = sum(np.random.default_rng(1000 * count + r).integers(-1000, 1000, count).astype(np.float64)
                       for r in range(size)).astype(dtype)
            got = x.copy()
            peer.call([got])(0)
            theirs = comm.allreduce(x, "sum")
            ok = bool(np.array_equal(got, want) and np.array_equal(theirs, want))
            ok_all = all(mcomm.allgather(ok))
            if not ok_all:
                status = max(status, 1)
            lines.append(f"peer {peer.name}: P={size} count={count}: {'ok' if ok_all else 'MISMATCH'}")
    close_peers(peers, mcomm)
    comm.free()
    mcomm.Free()
    if rank == 0:
        print("\n".join(lines), flush=True)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distml.bench.peers",
                                description="Check the peers' allreduce against numpy's and distml's "
                                            "(run under mpiexec on all ranks).")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers (default: all)")
    p.add_argument("--counts", default="1,3,1000,300000,9000001",
                   help="float32 element counts to check (default spans DeepSpeed's small and chunked paths)")
    a = p.parse_args(argv)
    return check([s for s in a.peers.split(",") if s], [int(c) for c in a.counts.split(",") if c])


if __name__ == "__main__":
    sys.exit(main())
