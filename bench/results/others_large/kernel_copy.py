"""The kernel's copy (process_vm_writev into this process's own array)
against np.copyto, one process, the same bytes, median of 300 each:

    .venv/bin/python bench/results/others_large/kernel_copy.py
"""
import ctypes, os, time, numpy as np
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
f = libc.process_vm_writev
f.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.c_ulong]
f.restype = ctypes.c_ssize_t
pid = os.getpid()
for blk in [64 << 10, 256 << 10, 1 << 20, 4 << 20]:
    src = np.ones(blk, np.uint8); dst = np.ones(blk, np.uint8)
    l = iovec(src.ctypes.data, blk); r = iovec(dst.ctypes.data, blk)
    def cma(): 
        n = f(pid, ctypes.byref(l), 1, ctypes.byref(r), 1, 0); assert n == blk
    def cp(): np.copyto(dst, src)
    res = {}
    for name, fn in [("cma", cma), ("memcpy", cp)] * 2:
        ts = []
        for _ in range(300):
            t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        res[name] = np.median(ts)
    print(f"{blk>>10} KiB: cma {blk/res['cma']/1e9:.1f} GB/s, memcpy {blk/res['memcpy']/1e9:.1f} GB/s")
