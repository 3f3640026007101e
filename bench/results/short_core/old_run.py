"""Runs a script or module (-m) with the build before the core's short paths
instead of the editable install: the editable install's import hooks are
taken out of sys.meta_path and the old build's site directory put first.
The old build was made with

    git worktree add /tmp/s11/oldsrc 8bbffaa
    (cd /tmp/s11/oldsrc && pip wheel --no-build-isolation --no-deps . -w /tmp/s11/oldwheel)
    pip install --no-deps --target /tmp/s11/oldsite /tmp/s11/oldwheel/*.whl

    mpiexec -n 2 .venv/bin/python bench/results/short_core/old_run.py -m distml.bench ...
"""
import sys, runpy
sys.meta_path[:] = [f for f in sys.meta_path if "distml" not in repr(f).lower() and "scikit" not in repr(f).lower() and "editable" not in repr(f).lower()]
sys.path.insert(0, "/tmp/s11/oldsite")
import distml
assert distml.__file__.startswith("/tmp/s11/oldsite"), distml.__file__
if sys.argv[1] == "-m":
    mod = sys.argv[2]; sys.argv = [mod] + sys.argv[3:]
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
else:
    script = sys.argv[1]; sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
