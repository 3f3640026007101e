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
