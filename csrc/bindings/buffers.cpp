// pybind11 bindings of the gradient buffer (csrc/buffers/grad_buffer.h):
// argument conversion, GIL release, arrays that view the buffer's memory.
// The adapters over it live in python/distml/parallel/data_parallel.py,
// sharded.py and python/distml/torch/optimizer.py.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <dlfcn.h>

#include <cstdint>
#include <optional>
#include <string>

#include "buffers/grad_buffer.h"
#include "common/error.h"
#include "engine/communicator.h"

namespace py = pybind11;
using namespace distml;

namespace {

// The buffer's heap allocations are reported to tracemalloc (under their own
// domain), so that Python's memory accounting sees them as it sees numpy's.
// Python 3.11's tracemalloc.h declares the two calls without C linkage in
// C++, so they are looked up by name.
constexpr unsigned int kTraceDomain = 0x64626631;  // "dbf1"
using TrackFn = int (*)(unsigned int, std::uintptr_t, std::size_t);
using UntrackFn = int (*)(unsigned int, std::uintptr_t);
TrackFn g_track = nullptr;
UntrackFn g_untrack = nullptr;

void track(const void* p, std::size_t bytes) {
  if (!g_track || !Py_IsInitialized()) return;
  PyGILState_STATE s = PyGILState_Ensure();
  g_track(kTraceDomain, reinterpret_cast<std::uintptr_t>(p), bytes);
  PyGILState_Release(s);
}

void untrack(const void* p) {
  if (!g_untrack || !Py_IsInitialized()) return;
  PyGILState_STATE s = PyGILState_Ensure();
  g_untrack(kTraceDomain, reinterpret_cast<std::uintptr_t>(p));
  PyGILState_Release(s);
}

// A 1-D uint8 array over `bytes` bytes at `p`, keeping `owner` alive; None
// for memory not allocated.
py::object bytes_array(const py::object& owner, char* p, std::size_t bytes) {
  if (!p) return py::none();
  return py::array(py::dtype("uint8"), {static_cast<py::ssize_t>(bytes)}, {static_cast<py::ssize_t>(1)}, p,
                   owner);
}

const void* contiguous_data(const py::array& a, std::size_t nbytes, const char* what) {
  DISTML_CHECK_ARG(a.flags() & py::array::c_style, what << " is not C-contiguous");
  DISTML_CHECK_ARG(static_cast<std::size_t>(a.nbytes()) == nbytes,
                   what << " has " << a.nbytes() << " bytes, expected " << nbytes);
  return a.data();
}

}  // namespace

void bind_buffers(py::module_& m) {
  using buffers::GradBuffer;
  g_track = reinterpret_cast<TrackFn>(dlsym(RTLD_DEFAULT, "PyTraceMalloc_Track"));
  g_untrack = reinterpret_cast<UntrackFn>(dlsym(RTLD_DEFAULT, "PyTraceMalloc_Untrack"));
  buffers::set_alloc_observer({&track, &untrack});

  py::class_<GradBuffer, std::shared_ptr<GradBuffer>>(
      m, "GradBuffer",
      "Flat gradient buffer with buckets that reduce themselves (csrc/buffers/grad_buffer.h). "
      "Construction is collective when `shared` puts memory in a node-shared window.")
      .def(py::init([](const py::object& comm, const std::vector<std::size_t>& sizes,
                       const std::vector<DType>& dtypes, bool shard, Op op, std::size_t bucket_bytes,
                       std::optional<DType> wire, bool shared, bool flat, int slots) {
             buffers::Options o;
             o.mode = shard ? buffers::Mode::kShard : buffers::Mode::kReplicated;
             o.op = op;
             o.bucket_bytes = bucket_bytes;
             o.compress = wire.has_value();
             if (wire) o.wire = *wire;
             o.shared = shared;
             o.flat = flat;
             o.slots = slots;
             const std::vector<DType>& types = dtypes;
             engine::Communicator* c = comm.is_none() ? nullptr : comm.cast<engine::Communicator*>();
             py::gil_scoped_release nogil;
             return std::make_shared<GradBuffer>(c, sizes, types, o);
           }),
           py::arg("comm"), py::arg("sizes"), py::arg("dtypes"), py::arg("shard") = false, py::arg("op") = Op::kAvg,
           py::arg("bucket_bytes") = 25 << 20, py::arg("wire") = py::none(), py::arg("shared") = false,
           py::arg("flat") = true, py::arg("slots") = 1, py::keep_alive<1, 2>())
      // ---- layout
      .def_property_readonly("params", &GradBuffer::params)
      .def_property_readonly("groups", &GradBuffer::groups)
      .def("group_dtype", &GradBuffer::group_dtype)
      .def("group_wire", &GradBuffer::group_wire)
      .def("group_elements", &GradBuffer::group_elements)
      .def("group_of", &GradBuffer::group_of)
      .def("offset", &GradBuffer::offset)
      .def("shared", &GradBuffer::shared)
      .def("buckets",
           [](const GradBuffer& b) {
             py::list out;
             for (const auto& k : b.buckets()) out.append(py::make_tuple(k.group, k.start, k.stop, k.params));
             return out;
           },
           "(group, start, stop, params) per bucket, in launch order.")
      .def("buckets_of", [](const GradBuffer& b, int i) { return b.buckets_of().at(i); })
      .def(
          "flat",
          [](py::object self, int g) {
            auto& b = self.cast<GradBuffer&>();
            return bytes_array(self, b.flat(g), b.group_elements(g) * dtype_size(b.group_dtype(g)));
          },
          "Group g's flat buffer as bytes (None in shard mode before allocate_flat).")
      .def("wire",
           [](py::object self, int g) {
             auto& b = self.cast<GradBuffer&>();
             return bytes_array(self, b.wire(g), b.group_elements(g) * dtype_size(b.group_wire(g)));
           })
      .def("grad_shard",
           [](py::object self) {
             auto& b = self.cast<GradBuffer&>();
             return bytes_array(self, b.grad_shard(), b.shard() * dtype_size(b.group_dtype(0)));
           })
      .def_property_readonly("shard", &GradBuffer::shard)
      .def_property_readonly("start", &GradBuffer::start)
      .def_property_readonly("numel", &GradBuffer::numel)
      .def_property_readonly("width", &GradBuffer::width)
      .def_property_readonly("grad_bytes", &GradBuffer::grad_bytes)
      // ---- one step
      .def("mark_ready", &GradBuffer::mark_ready, py::call_guard<py::gil_scoped_release>(),
           "Marks gradient i final for this step; launches the buckets this completes, in order.")
      .def("mark_ready_many",
           [](GradBuffer& b, const std::vector<int>& indices) {
             py::gil_scoped_release nogil;
             for (int i : indices) b.mark_ready(i);
           })
      .def("would_launch", &GradBuffer::would_launch)
      .def("launch_all", &GradBuffer::launch_all, py::call_guard<py::gil_scoped_release>())
      .def(
          "wait_all",
          [](GradBuffer& b) {
            {
              py::gil_scoped_release nogil;
              b.wait_all();
            }
            b.drain();  // what the finished calls kept: let go here, with the GIL held
          },
          "Launches what is left, waits for every bucket, widens wire formats back; the next "
          "step starts. Raises the first collective error.")
      .def_property_readonly("launched", &GradBuffer::launched)
      .def_property_readonly("marked", &GradBuffer::marked)
      .def_property_readonly("pending", &GradBuffer::pending)
      .def("zero", &GradBuffer::zero, py::call_guard<py::gil_scoped_release>())
      // ---- shard mode
      .def("set_source",
           [](GradBuffer& b, int i, const py::array& a, std::size_t nbytes) {
             b.set_source(i, contiguous_data(a, nbytes, "a gradient"));
           })
      .def("allocate_flat", &GradBuffer::allocate_flat)
      .def("gather", [](GradBuffer& b, py::array params_flat) {
        DISTML_CHECK_ARG(params_flat.writeable(), "the flat parameters are read-only");
        void* p = const_cast<void*>(contiguous_data(
            params_flat, b.group_elements(0) * dtype_size(b.group_dtype(0)), "the flat parameters"));
        py::gil_scoped_release nogil;
        b.gather(p);
      });
}
