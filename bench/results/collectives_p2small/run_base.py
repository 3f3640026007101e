# Runs distml.bench from /tmp/p2s/basepy (the tree before this work), past the editable install's finder.
import sys, runpy
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower() and "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, "/tmp/p2s/basepy")
for k in [k for k in sys.modules if k == "distml" or k.startswith("distml.")]: del sys.modules[k]
sys.argv = ["distml.bench"] + sys.argv[1:]
runpy.run_module("distml.bench", run_name="__main__", alter_sys=True)
