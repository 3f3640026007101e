// pybind11 bindings: argument conversion, GIL release, and the mapping of the
// core's errors to distml's Python exceptions. The Python layer
// (python/distml/comm.py) validates arrays and passes pointers, except for
// the collectives' common call, whose checks short_call makes here (a small
// collective is latency bound) and hands everything else back.
#include <mpi.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/types.h"
#include "engine/communicator.h"
#include "kernels/reduce.h"
#include "engine/variant_tuner.h"
#include "machine/cross_core.h"
#include "transport/shm.h"

namespace py = pybind11;
using namespace distml;

namespace {

// The exception classes live in python/distml/_errors.py.
py::object error_class(const char* name) {
  return py::module_::import("distml._errors").attr(name);
}

void raise_as(const char* name, const std::exception& e) {
  py::object cls = error_class(name);
  py::object exc = cls(py::str(e.what()));
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

// The data pointer and size in bytes of an array argument; null for None.
const void* data_of(const py::object& arr, std::size_t* nbytes) {
  *nbytes = 0;
  if (arr.is_none()) return nullptr;
  auto a = py::reinterpret_borrow<py::array>(arr);
  *nbytes = static_cast<std::size_t>(a.nbytes());
  return a.data();
}

// x's shape into the call: a tuple (as the short paths pass it) read in
// place, anything else through pybind11's conversion to a vector.
void set_shape(engine::Call& c, const py::handle& shape) {
  if (PyTuple_Check(shape.ptr())) {
    const Py_ssize_t n = PyTuple_GET_SIZE(shape.ptr());
    c.ndim = static_cast<int>(n);
    for (Py_ssize_t i = 0; i < n && i < engine::kMaxDims; ++i) {
      const long long d = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
      if (d == -1 && PyErr_Occurred()) throw py::error_already_set();
      c.shape[i] = d;
    }
    return;
  }
  const auto dims = shape.cast<std::vector<std::int64_t>>();
  c.ndim = static_cast<int>(dims.size());
  for (int i = 0; i < c.ndim && i < engine::kMaxDims; ++i) c.shape[i] = dims[i];
}

// Refuses overlapping buffers: exactly the same buffer is an in-place call;
// any other overlap would have the schedule read what it already overwrote.
void check_overlap(const engine::Call& c, std::size_t in_bytes, std::size_t out_bytes) {
  const char* i0 = static_cast<const char*>(c.in);
  const char* o0 = static_cast<const char*>(c.out);
  if (i0 && o0 && i0 != o0 && in_bytes && out_bytes && i0 < o0 + out_bytes && o0 < i0 + in_bytes) {
    DISTML_THROW(InvalidArgument, "out overlaps x without being x; pass out=x for an in-place call, or separate arrays");
  }
  // Whose output has another shape than the input, nothing runs in place.
  if (i0 && i0 == o0 && in_bytes && out_bytes && (c.kind == engine::Kind::kAllgather || c.kind == engine::Kind::kReduceScatter)) {
    DISTML_THROW(InvalidArgument, "out overlaps x; " << engine::kind_name(c.kind) << " needs separate input and output");
  }
}

// The algorithm a call names ("auto" without a lookup).
engine::Algo call_algo(engine::Kind kind, const std::string& algo) {
  return algo == "auto" ? engine::Algo::kAuto : engine::parse_algo(kind, algo);
}

// The collective, dtype and op arrive as plain ints (members of Kind, DType
// and Op convert through __index__): converting three enum arguments cost
// more than the rest of a small call's way through the bindings.
engine::Call make_call(int kind, int dtype, int op, std::size_t count, std::size_t unit, int root,
                       const std::string& algo, const py::handle& shape,
                       const py::object& in, const py::object& out) {
  DISTML_CHECK_ARG(kind >= 0 && kind < engine::kKinds && dtype >= 0 && dtype < kNumDTypes && op >= 0 && op < kNumOps,
                   "unknown collective, dtype or op code");
  engine::Call c;
  c.kind = engine::Kind(kind);
  c.dtype = DType(dtype);
  c.op = Op(op);
  c.count = count;
  c.unit = unit;
  c.root = root;
  c.algo = call_algo(c.kind, algo);
  set_shape(c, shape);
  std::size_t in_bytes = 0, out_bytes = 0;
  c.in = data_of(in, &in_bytes);
  c.out = const_cast<void*>(data_of(out, &out_bytes));
  check_overlap(c, in_bytes, out_bytes);
  return c;
}

// The collectives' short paths, whole in C++: a small collective is latency
// bound, and the checks the Python layer made for it (dtype, op, root,
// contiguity, out's shape and flags) cost 0.6 us of a 1.4 us allreduce in
// one process, and 1.5 us of 3.8 us between two ranks in the interleaved
// sweep, where the interpreter's caches are cold. short_call takes the
// common blocking call of allreduce, reduce, broadcast, allgather,
// reduce_scatter and alltoall: x an ndarray of a core dtype in native byte
// order, C-contiguous; op, algorithm strings; root an int of the
// communicator; out absent (a new result under kShortFreshMaxBytes, the
// result pool's size), x itself where the collective allows it, or a
// writeable C-contiguous ndarray of the result's shape and x's dtype. It
// passes the core exactly what the Python layer's paths pass (count, unit,
// shape), so ranks that take different paths still agree. Anything else
// returns NotImplemented before touching the communicator, and the Python
// layer takes the call (result pool, conversions, and the errors it names).
constexpr std::size_t kShortFreshMaxBytes = std::size_t{128} << 10;

// The core's dtype for a numpy type number; -1 for any other.
int short_dtype(PyObject* descr) {
  const auto* d = py::detail::array_descriptor_proxy(descr);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  if (d->byteorder == '<') return -1;
#else
  if (d->byteorder == '>') return -1;
#endif
  const bool long64 = sizeof(long) == 8;
  switch (d->type_num) {
    case 1: return int(DType::kInt8);     // NPY_BYTE
    case 2: return int(DType::kUInt8);    // NPY_UBYTE
    case 3: return int(DType::kInt16);    // NPY_SHORT
    case 4: return int(DType::kUInt16);   // NPY_USHORT
    case 5: return int(DType::kInt32);    // NPY_INT
    case 6: return int(DType::kUInt32);   // NPY_UINT
    case 7: return int(long64 ? DType::kInt64 : DType::kInt32);     // NPY_LONG
    case 8: return int(long64 ? DType::kUInt64 : DType::kUInt32);   // NPY_ULONG
    case 9: return int(DType::kInt64);    // NPY_LONGLONG
    case 10: return int(DType::kUInt64);  // NPY_ULONGLONG
    case 11: return int(DType::kFloat32); // NPY_FLOAT
    case 12: return int(DType::kFloat64); // NPY_DOUBLE
    case 23: return int(DType::kFloat16); // NPY_HALF
    default: return -1;
  }
}

// The op a string names, as Python's parse_op takes it without lower(); -1
// for anything else.
int short_op(PyObject* op) {
  if (!PyUnicode_Check(op)) return -1;
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(op, &n);
  if (!s) {
    PyErr_Clear();
    return -1;
  }
  for (int i = 0; i < kNumOps; ++i) {
    const char* name = op_name(Op(i));
    if (std::strlen(name) == static_cast<std::size_t>(n) && std::memcmp(name, s, n) == 0) return i;
  }
  return -1;
}

bool is_exact_array(PyObject* o) { return Py_TYPE(o) == py::detail::npy_api::get().PyArray_Type_; }

// out as the result of `shape` and `dtype`: out itself, or null where it
// does not fit (the Python layer then takes the call).
PyObject* fitting_out(PyObject* out, int dtype, int nd, const py::ssize_t* shape) {
  if (!is_exact_array(out)) return nullptr;
  const auto* oa = py::detail::array_proxy(out);
  constexpr int want = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  if ((oa->flags & want) != want || oa->nd != nd || short_dtype(oa->descr) != dtype) return nullptr;
  for (int i = 0; i < nd; ++i) {
    if (oa->dimensions[i] != shape[i]) return nullptr;
  }
  return out;
}

py::object short_call(engine::Communicator& self, int kind_code, py::handle x, py::handle op, py::handle out,
                      py::handle algorithm, py::handle root_obj) {
  const py::object back = py::reinterpret_borrow<py::object>(Py_NotImplemented);
  const auto kind = engine::Kind(kind_code);
  if (!is_exact_array(x.ptr()) || !PyUnicode_CheckExact(algorithm.ptr())) return back;
  const auto* xa = py::detail::array_proxy(x.ptr());
  if (!(xa->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return back;
  const int dtype = short_dtype(xa->descr);
  if (dtype < 0) return back;
  const bool reducing = kind == engine::Kind::kAllreduce || kind == engine::Kind::kReduce ||
                        kind == engine::Kind::kReduceScatter;
  int opc = int(Op::kSum);
  if (reducing) {
    opc = short_op(op.ptr());
    if (opc < 0 || !op_supported(DType(dtype), Op(opc))) return back;
  }
  int root = 0;
  if (kind == engine::Kind::kReduce || kind == engine::Kind::kBroadcast) {
    if (!PyLong_CheckExact(root_obj.ptr())) return back;
    const long r = PyLong_AsLong(root_obj.ptr());
    if (r == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return back;
    }
    if (r < 0 || r >= self.size()) return back;
    root = static_cast<int>(r);
  }
  const int nd = xa->nd;
  const py::ssize_t* dims = xa->dimensions;
  std::size_t count = 1;
  for (int i = 0; i < nd; ++i) count *= static_cast<std::size_t>(dims[i]);
  const std::size_t item = dtype_size(DType(dtype));
  const int P = self.size(), me = self.rank();

  // The result's shape, and what the core is told of x's shape and rows.
  std::vector<py::ssize_t> shape(dims, dims + nd);
  std::size_t unit = 1;
  bool pass_shape = true;     // x's shape as the Python paths pass it
  bool result = true;         // this rank gets a result array
  bool may_be_x = true;       // out=x is an in-place call
  switch (kind) {
    case engine::Kind::kAllreduce:
      pass_shape = nd > 1;  // 1-D as (): the count says it all
      break;
    case engine::Kind::kReduce:
      pass_shape = false;
      result = me == root;
      break;
    case engine::Kind::kBroadcast:
      pass_shape = false;
      break;
    case engine::Kind::kAllgather:
      if (nd == 0) return back;
      shape[0] *= P;
      may_be_x = false;
      break;
    case engine::Kind::kReduceScatter: {
      if (nd == 0) return back;
      const py::ssize_t rows = dims[0];
      shape[0] = rows / P + (me < rows % P ? 1 : 0);
      for (int i = 1; i < nd; ++i) unit *= static_cast<std::size_t>(dims[i]);
      may_be_x = false;
      break;
    }
    case engine::Kind::kAlltoall:
      if (nd == 0 || dims[0] % P != 0) return back;
      break;
    default:
      return back;
  }
  std::size_t result_bytes = item;
  for (auto d : shape) result_bytes *= static_cast<std::size_t>(d);
  py::object res = py::none();
  void* dst = nullptr;
  if (kind == engine::Kind::kBroadcast) {
    // In place on every rank; x must be writeable.
    if (!(xa->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) return back;
    res = py::reinterpret_borrow<py::object>(x);
    dst = xa->data;
  } else if (result) {
    if (out.is_none()) {
      if (result_bytes >= kShortFreshMaxBytes) return back;
      res = py::array(py::reinterpret_borrow<py::dtype>(xa->descr), shape);
    } else if (may_be_x && out.ptr() == x.ptr()) {
      if (!(xa->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) return back;
      res = py::reinterpret_borrow<py::object>(out);
    } else {
      PyObject* o = fitting_out(out.ptr(), dtype, static_cast<int>(shape.size()), shape.data());
      if (!o) return back;
      res = py::reinterpret_borrow<py::object>(o);
    }
    dst = py::detail::array_proxy(res.ptr())->data;
  }
  Py_ssize_t alen = 0;
  const char* a = PyUnicode_AsUTF8AndSize(algorithm.ptr(), &alen);
  if (!a) throw py::error_already_set();
  engine::Call c;
  c.kind = kind;
  c.dtype = DType(dtype);
  c.op = Op(opc);
  c.count = count;
  c.unit = unit;
  c.root = root;
  c.algo = call_algo(kind, std::string(a, static_cast<std::size_t>(alen)));
  c.ndim = pass_shape ? nd : 0;
  for (int i = 0; i < c.ndim && i < engine::kMaxDims; ++i) c.shape[i] = dims[i];
  c.in = xa->data;
  c.out = dst;
  check_overlap(c, count * item, dst ? result_bytes : 0);
  self.drain();
  {
    py::gil_scoped_release nogil;
    self.run(c);
  }
  return res;
}

// What a queued collective's buffers belong to, for the engine to keep until
// the collective is over. Let go under the GIL: by the caller's next call
// into the engine (Communicator::drain), or by whoever drops the last
// reference otherwise.
std::shared_ptr<void> keep_alive(const py::object& in, const py::object& out) {
  auto* held = new py::object(py::make_tuple(in, out));
  return std::shared_ptr<void>(held, [](void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
}

// A settings change, applied once the collectives queued before it have run
// (the GIL is released while they do: they may need it to finish).
void change(engine::Communicator& c, const std::function<void(engine::Settings&)>& fn) {
  py::gil_scoped_release nogil;
  c.update_settings(fn);
}

std::string compiled_mpi() {
#if defined(MPICH_VERSION)
  return std::string("MPICH ") + MPICH_VERSION;
#elif defined(OMPI_MAJOR_VERSION)
  return "Open MPI " + std::to_string(OMPI_MAJOR_VERSION) + "." + std::to_string(OMPI_MINOR_VERSION) +
         "." + std::to_string(OMPI_RELEASE_VERSION);
#else
  return "unknown MPI";
#endif
}

std::string runtime_mpi() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  MPI_Get_library_version(buf, &len);
  return std::string(buf, len);
}

kernels::Isa parse_isa(const std::string& name) {
  for (auto isa : {kernels::Isa::kBaseline, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (name == kernels::isa_name(isa)) return isa;
  }
  DISTML_THROW(InvalidArgument, "unknown instruction set '" << name << "'");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "distml's compiled core (private: use the distml package)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const MpiError& e) {
      py::object cls = error_class("MPIError");
      py::object exc = cls(py::str(e.what()), e.error_class(), py::str(e.mpi_string()));
      PyErr_SetObject(cls.ptr(), exc.ptr());
    } catch (const Timeout& e) {
      raise_as("CommTimeoutError", e);
    } catch (const NoMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const Mismatch& e) {
      raise_as("MismatchError", e);
    } catch (const Unusable& e) {
      raise_as("CommunicatorError", e);
    } catch (const Error& e) {
      raise_as("DistmlError", e);
    }
  });

  m.attr("SHORT_FRESH_MAX_BYTES") = kShortFreshMaxBytes;
  m.def("compiled_mpi", &compiled_mpi, "The MPI library this module was built against.");
  m.def("runtime_mpi", &runtime_mpi, "MPI_Get_library_version of the library loaded now.");
  m.def(
      "abort",
      [](int code) {
        py::gil_scoped_release nogil;
        MPI_Abort(MPI_COMM_WORLD, code);
      },
      "MPI_Abort on MPI_COMM_WORLD: ends every rank of the job.");
  m.def("mpi_version", [] {
    int v = 0, sv = 0;
    MPI_Get_version(&v, &sv);
    return py::make_tuple(v, sv);
  });

  py::class_<engine::Work, std::shared_ptr<engine::Work>>(m, "Work")
      .def("wait",
           [](engine::Work& w) {
             {
               py::gil_scoped_release nogil;
               w.wait();
             }
             w.graveyard().drain();
           })
      .def("test", [](engine::Work& w) {
        bool done = w.test();
        if (done) w.graveyard().drain();
        return done;
      });

  // The codes of collectives, element types and operators, named as the
  // core names them: the one definition the Python layer uses.
  py::enum_<engine::Kind> kind(m, "Kind", "Collectives, as the core numbers them.", py::arithmetic());
  for (int i = 0; i < engine::kKinds; ++i) kind.value(engine::kind_name(engine::Kind(i)), engine::Kind(i));
  py::enum_<DType> dtype(m, "DType", "Element types, as the core numbers them.", py::arithmetic());
  for (int i = 0; i < kNumDTypes; ++i) dtype.value(dtype_name(DType(i)), DType(i));
  py::enum_<Op> op(m, "Op", "Reduction operators, as the core numbers them.", py::arithmetic());
  for (int i = 0; i < kNumOps; ++i) op.value(op_name(Op(i)), Op(i));
  m.def("accepted_algorithms", [](engine::Kind k) {
    std::vector<std::string> names;
    for (engine::Algo a : engine::accepted_algorithms(k)) names.emplace_back(engine::algo_name(a));
    return names;
  }, "The algorithm names a collective accepts, \"auto\" and \"mpi\" first.");
  // The one split of a range over ranks (algorithms::Blocks): numpy.array_split's.
  m.def("split_range", [](std::size_t n, int parts, int index) {
    DISTML_CHECK_ARG(parts >= 1 && index >= 0 && index < parts, "part " << index << " of " << parts << " does not exist");
    const algorithms::Blocks blocks{n, parts};
    return std::make_pair(blocks.offset(index), blocks.offset(index) + blocks.size(index));
  }, py::arg("n"), py::arg("parts"), py::arg("index"),
     "[start, stop) of part `index` when n items are split into `parts` as numpy.array_split does.");

  // This rank's part of a node-shared window, as a writable byte buffer.
  py::class_<transport::ShmWindow, std::shared_ptr<transport::ShmWindow>>(m, "SharedBuffer",
                                                                          py::buffer_protocol())
      .def_buffer([](transport::ShmWindow& w) {
        return py::buffer_info(w.mine(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(w.bytes())}, {1});
      })
      .def_property_readonly("nbytes", &transport::ShmWindow::bytes)
      .def_property_readonly("id", &transport::ShmWindow::id);

  py::class_<engine::Communicator>(m, "Communicator")
      .def(py::init([](std::int64_t fortran_handle, double timeout, bool check,
                       std::size_t segment_bytes, bool shm, std::size_t shm_slot_bytes) {
             engine::Settings s;
             s.timeout = timeout;
             s.check = check;
             if (segment_bytes) s.tuning.segment_bytes = segment_bytes;
             s.shm = shm;
             if (shm_slot_bytes) s.shm_slot_bytes = shm_slot_bytes;
             MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(fortran_handle));
             py::gil_scoped_release nogil;
             return std::make_unique<engine::Communicator>(comm, s);
           }),
           py::arg("fortran_handle"), py::arg("timeout"), py::arg("check"),
           py::arg("segment_bytes"), py::arg("shm") = true, py::arg("shm_slot_bytes") = 0)
      .def_property_readonly("rank", &engine::Communicator::rank)
      .def_property_readonly("size", &engine::Communicator::size)
      .def(
          "run",
          [](engine::Communicator& self, int kind, int dtype, int op, std::size_t count, std::size_t unit,
             int root, const std::string& algo, const py::object& shape, const py::object& in,
             const py::object& out) {
            auto call = make_call(kind, dtype, op, count, unit, root, algo, shape, in, out);
            self.drain();
            py::gil_scoped_release nogil;
            self.run(call);
          })
      .def("short", &short_call, py::arg("kind"), py::arg("x"), py::arg("op"), py::arg("out"), py::arg("algorithm"),
           py::arg("root"),
           "A blocking collective of the common call, or NotImplemented where the Python layer must take it "
           "(see short_call in csrc/bindings/module.cpp).")
      .def(
          "refuse",
          [](engine::Communicator& self, int kind, int dtype, int op, std::size_t count, int root,
             const std::string& algo, bool no_memory) {
            auto call = make_call(kind, dtype, op, count, 1, root, algo, py::tuple(), py::none(), py::none());
            call.invalid = no_memory ? engine::kNoMemory : engine::kInvalidArguments;
            py::gil_scoped_release nogil;
            self.run(call);
          },
          py::arg("kind"), py::arg("dtype"), py::arg("op"), py::arg("count"), py::arg("root"), py::arg("algo"),
          py::arg("no_memory") = false,
          "Takes part in a collective's agreement as unable to run it (invalid arguments, or no "
          "memory for its buffers), so that every rank raises; then raises here.")
      .def("submit",
           [](engine::Communicator& self, int kind, int dtype, int op, std::size_t count,
              std::size_t unit, int root, const std::string& algo,
              const py::object& shape, const py::object& in, const py::object& out) {
             auto call = make_call(kind, dtype, op, count, unit, root, algo, shape, in, out);
             auto keep = keep_alive(in, out);
             self.drain();
             py::gil_scoped_release nogil;
             return self.submit(call, std::move(keep));
           })
      .def(
          "run_rows",
          [](engine::Communicator& self, int kind, int dtype, std::size_t count, std::size_t unit,
             const std::string& algo, const py::object& shape, const py::object& in,
             const py::object& out, std::vector<std::int64_t> rows, bool async) -> py::object {
            auto call = make_call(kind, dtype, static_cast<int>(Op::kSum), count, unit, 1, algo, shape, in, out);
            call.rows = std::make_shared<const std::vector<std::int64_t>>(std::move(rows));
            if (async) {
              auto keep = keep_alive(in, out);
              self.drain();
              py::gil_scoped_release nogil;
              return py::cast(self.submit(call, std::move(keep)));
            }
            self.drain();
            {
              py::gil_scoped_release nogil;
              self.run(call);
            }
            return py::none();
          },
          "The data round of alltoallv or allgatherv (see engine::Call): `rows` holds the row "
          "counts; returns a Work when `async`.")
      .def("resolve",
           [](engine::Communicator& self, engine::Kind kind, DType dtype, std::size_t count,
              const std::string& algo) {
             engine::Call c;
             c.kind = kind;
             c.dtype = dtype;
             c.count = count;
             c.algo = engine::parse_algo(c.kind, algo);
             return std::string(engine::algo_name(self.resolve(c)));
           })
      .def("free",
           [](engine::Communicator& self) {
             {
               py::gil_scoped_release nogil;
               self.free();
             }
             self.drain();
           })
      .def("abandon",
           [](engine::Communicator& self) {
             {
               py::gil_scoped_release nogil;
               self.abandon();
             }
             self.drain();
           })
      .def("allocate_shared", &engine::Communicator::allocate_shared,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("one_node", &engine::Communicator::one_node)
      .def_property_readonly("single_copy", &engine::Communicator::single_copy)
      .def_property_readonly("hierarchical", &engine::Communicator::hierarchical)
      .def_property(
          "timeout", [](engine::Communicator& s) { return s.settings().timeout; },
          [](engine::Communicator& s, double t) { change(s, [&](engine::Settings& x) { x.timeout = t; }); })
      .def_property(
          "stall_warning", [](engine::Communicator& s) { return s.settings().stall_warning; },
          [](engine::Communicator& s, double t) { change(s, [&](engine::Settings& x) { x.stall_warning = t; }); })
      .def_property_readonly("check", [](engine::Communicator& s) { return s.settings().check; })
      .def_property(
          "segment_bytes", [](engine::Communicator& s) { return s.settings().tuning.segment_bytes; },
          [](engine::Communicator& s, std::size_t v) {
            DISTML_CHECK_ARG(v > 0, "segment_bytes must be positive");
            change(s, [&](engine::Settings& x) { x.tuning.segment_bytes = v; });
          })
      .def_property(
          "shm_one_shot_bytes", [](engine::Communicator& s) { return s.settings().shm_one_shot_bytes; },
          [](engine::Communicator& s, std::size_t v) { change(s, [&](engine::Settings& x) { x.shm_one_shot_bytes = v; }); })
      .def_property(
          "shm_single_copy_bytes", [](engine::Communicator& s) { return s.settings().shm_single_copy_bytes; },
          [](engine::Communicator& s, std::size_t v) { change(s, [&](engine::Settings& x) { x.shm_single_copy_bytes = v; }); })
      .def_property(
          "shm_single_copy_max_bytes",
          [](engine::Communicator& s) { return s.settings().shm_single_copy_max_bytes; },
          [](engine::Communicator& s, std::size_t v) { change(s, [&](engine::Settings& x) { x.shm_single_copy_max_bytes = v; }); })
      .def_property(
          "shm_single_copy_blocks_bytes",
          [](engine::Communicator& s) { return s.settings().shm_single_copy_blocks_bytes; },
          [](engine::Communicator& s, std::size_t v) { change(s, [&](engine::Settings& x) { x.shm_single_copy_blocks_bytes = v; }); })
      .def_property(
          "shm_stream_bytes", [](engine::Communicator& s) { return s.settings().shm_stream_bytes; },
          [](engine::Communicator& s, std::size_t v) { change(s, [&](engine::Settings& x) { x.shm_stream_bytes = v; }); })
      .def_property(
          "shm_tune", [](engine::Communicator& s) { return s.settings().shm_tune; },
          [](engine::Communicator& s, bool v) { change(s, [&](engine::Settings& x) { x.shm_tune = v; }); })
      .def_property(
          "carry_bytes", [](engine::Communicator& s) { return s.settings().carry_bytes; },
          [](engine::Communicator& s, std::size_t v) { change(s, [&](engine::Settings& x) { x.carry_bytes = v; }); })
      .def("set_thresholds",
           [](engine::Communicator& s, std::size_t allreduce, std::size_t broadcast,
              std::size_t reduce) {
             change(s, [&](engine::Settings& x) {
               x.allreduce_small_bytes = allreduce;
               x.broadcast_small_bytes = broadcast;
               x.reduce_small_bytes = reduce;
             });
           })
      .def("agree_settings", &engine::Communicator::agree_settings, py::call_guard<py::gil_scoped_release>(),
           "Raises MismatchError on every rank if ranks' settings differ (collective).")
      .def("tuned_median", &engine::Communicator::tuned_median, py::arg("kind"), py::arg("bytes"), py::arg("variant"),
           py::arg("in_place") = false,
           "Node rank 0: the median of the variant's latest times (-1: none; -1 on other ranks).")
      .def("set_finish_delay", &engine::Communicator::set_finish_delay, py::arg("seconds"),
           "Tests: this rank pauses at the end of every call the choice by times covers.")
      .def("set_trace", &engine::Communicator::set_trace)
      .def("drain_trace",
           [](engine::Communicator& s) {
             py::list out;
             for (const auto& e : s.drain_trace()) {
               py::dict d;
               d["seq"] = e.seq;
               d["collective"] = engine::kind_name(e.kind);
               d["dtype"] = dtype_name(e.dtype);
               d["algorithm"] = engine::algo_name(e.algo);
               d["schedule"] = engine::variant_name(e.algo, e.variant);
               d["bytes"] = e.bytes;
               d["async"] = e.async;
               d["ok"] = e.ok;
               d["queued"] = e.queued;
               d["start"] = e.start;
               d["arrived"] = e.arrived;
               d["end"] = e.end;
               out.append(d);
             }
             return out;
           })
      .def("set_table",
           [](engine::Communicator& s, engine::Kind kind, const std::vector<std::pair<std::size_t, std::string>>& rows) {
             std::vector<std::pair<std::size_t, engine::Algo>> table;
             for (const auto& [bytes, name] : rows) {
               engine::Algo a = engine::parse_algo(kind, name);
               DISTML_CHECK_ARG(a != engine::Algo::kAuto, "a table row cannot name 'auto'");
               table.emplace_back(bytes, a);
             }
             change(s, [&](engine::Settings& x) { x.table[static_cast<int>(kind)] = table; });
           })
      .def("thresholds", [](engine::Communicator& s) {
        py::dict d;
        d["allreduce_small_bytes"] = s.settings().allreduce_small_bytes;
        d["broadcast_small_bytes"] = s.settings().broadcast_small_bytes;
        d["reduce_small_bytes"] = s.settings().reduce_small_bytes;
        d["pair_ring_min_bytes"] = s.settings().pair_ring_min_bytes;
        d["pair_ring_max_bytes"] = s.settings().pair_ring_max_bytes;
        d["shm_slot_bytes"] = s.settings().shm_slot_bytes;
        d["shm_one_shot_bytes"] = s.settings().shm_one_shot_bytes;
        d["shm_single_copy_bytes"] = s.settings().shm_single_copy_bytes;
        d["shm_single_copy_max_bytes"] = s.settings().shm_single_copy_max_bytes;
        d["shm_single_copy_blocks_bytes"] = s.settings().shm_single_copy_blocks_bytes;
        d["shm_stream_bytes"] = s.settings().shm_stream_bytes;
        d["carry_bytes"] = s.settings().carry_bytes;
        return d;
      });

  // Kernels, for tests and benchmarks of the reduction layer alone.
  m.def("kernel_isas", [] {
    std::vector<std::string> names;
    for (auto isa : kernels::supported_isas()) names.emplace_back(kernels::isa_name(isa));
    return names;
  });
  m.def("kernel_current_isa", [] { return std::string(kernels::isa_name(kernels::current_isa())); });
  m.def("kernel_set_isa", [](const std::string& name) { kernels::set_isa(parse_isa(name)); });
  // Arrays, not buffers: numpy cannot export ml_dtypes' bfloat16 through the
  // buffer protocol.
  auto writable = [](py::array& a, const char* what) {
    DISTML_CHECK_ARG(a.writeable(), what << " is read-only");
    DISTML_CHECK_ARG(a.flags() & py::array::c_style, what << " is not C-contiguous");
    return a.mutable_data();
  };
  auto readable = [](const py::array& a, const char* what) {
    DISTML_CHECK_ARG(a.flags() & py::array::c_style, what << " is not C-contiguous");
    return a.data();
  };
  m.def("kernel_reduce", [=](py::array dst, py::array src, DType dtype, Op op) {
    DISTML_CHECK_ARG(dst.size() == src.size(), "dst and src differ in length");
    DISTML_CHECK_ARG(static_cast<std::size_t>(dst.itemsize()) == dtype_size(dtype),
                     "item size does not match dtype");
    void* d = writable(dst, "dst");
    const void* s = readable(src, "src");
    py::gil_scoped_release nogil;
    kernels::reduce(d, s, static_cast<std::size_t>(dst.size()), dtype, op);
  });
  m.def("kernel_reduce_many", [=](py::array dst, std::vector<py::array> srcs, DType dtype, Op op,
                                  bool stream) {
    DISTML_CHECK_ARG(!srcs.empty(), "reduce_many needs at least one source");
    DISTML_CHECK_ARG(static_cast<std::size_t>(dst.itemsize()) == dtype_size(dtype),
                     "item size does not match dtype");
    std::vector<const void*> ptrs;
    for (auto& s : srcs) {
      DISTML_CHECK_ARG(s.size() == dst.size(), "a source differs in length from dst");
      ptrs.push_back(readable(s, "src"));
    }
    void* d = writable(dst, "dst");
    py::gil_scoped_release nogil;
    (stream ? kernels::reduce_many_stream : kernels::reduce_many)(
        d, ptrs.data(), static_cast<int>(ptrs.size()), static_cast<std::size_t>(dst.size()), dtype, op);
  }, py::arg("dst"), py::arg("srcs"), py::arg("dtype"), py::arg("op"), py::arg("stream") = false);
  m.def("kernel_copy_stream", [=](py::array dst, py::array src) {
    DISTML_CHECK_ARG(dst.nbytes() == src.nbytes(), "dst and src differ in size");
    void* d = writable(dst, "dst");
    const void* s = readable(src, "src");
    py::gil_scoped_release nogil;
    kernels::copy_stream(d, s, static_cast<std::size_t>(dst.nbytes()));
  });
  m.def("kernel_widen_half", [=](py::array src, DType from, py::array out) {
    DISTML_CHECK_ARG(out.itemsize() == 4 && src.size() == out.size(), "out must be float32 of src's length");
    DISTML_CHECK_ARG(static_cast<std::size_t>(src.itemsize()) == dtype_size(from), "item size does not match dtype");
    const void* s = readable(src, "src");
    void* o = writable(out, "out");
    py::gil_scoped_release nogil;
    kernels::widen_half(from, s, static_cast<float*>(o), static_cast<std::size_t>(src.size()));
  });
  m.def("kernel_narrow_half", [=](py::array in, DType to, py::array dst) {
    DISTML_CHECK_ARG(in.itemsize() == 4 && in.size() == dst.size(), "in must be float32 of dst's length");
    DISTML_CHECK_ARG(static_cast<std::size_t>(dst.itemsize()) == dtype_size(to), "item size does not match dtype");
    const void* i = readable(in, "in");
    void* d = writable(dst, "dst");
    py::gil_scoped_release nogil;
    kernels::narrow_half(to, static_cast<const float*>(i), d, static_cast<std::size_t>(in.size()));
  });
  m.def("kernel_scale_avg", [=](py::array buf, DType dtype, std::size_t divisor) {
    DISTML_CHECK_ARG(divisor > 0, "divisor must be positive");
    DISTML_CHECK_ARG(static_cast<std::size_t>(buf.itemsize()) == dtype_size(dtype),
                     "item size does not match dtype");
    void* b = writable(buf, "buf");
    py::gil_scoped_release nogil;
    kernels::scale_avg(b, static_cast<std::size_t>(buf.size()), dtype, divisor);
  });
  // The choice between a shared-memory schedule's variants, on its own
  // (engine/variant_tuner.h): for tests of the policy.
  py::enum_<engine::Variant>(m, "Variant", "A shared-memory schedule's variants the choice by times picks from.")
      .value("staged", engine::Variant::kStaged)
      .value("single_copy", engine::Variant::kSingleCopy)
      .value("staged_streaming", engine::Variant::kStagedStreaming)
      .value("pair_ring", engine::Variant::kPairRing);
  py::class_<engine::VariantTuner>(m, "VariantTuner")
      .def(py::init<double>(), py::arg("explore_seconds"))
      .def("choose", &engine::VariantTuner::choose, py::arg("kind"), py::arg("bytes"), py::arg("now"),
           py::arg("offered") = engine::VariantTuner::kOfferAll, py::arg("in_place") = false,
           "The variant the next call of `kind` and `bytes` (in place or not) runs, among those offered "
           "(bits 1 << variant).")
      .def("record", &engine::VariantTuner::record, py::arg("kind"), py::arg("bytes"), py::arg("variant"),
           py::arg("seconds"), py::arg("in_place") = false)
      .def_property_readonly_static("samples", [](py::object) { return engine::VariantTuner::kSamples; })
      .def_property_readonly_static("warmup", [](py::object) { return engine::VariantTuner::kWarmup; })
      .def_property_readonly_static("period_calls", [](py::object) { return engine::VariantTuner::kPeriodCalls; })
      .def_property_readonly_static("drift", [](py::object) { return engine::VariantTuner::kDrift; })
      .def("median", &engine::VariantTuner::median, py::arg("kind"), py::arg("bytes"), py::arg("variant"),
           py::arg("in_place") = false, "The median of the variant's latest times (-1: none).")
      .def_property_readonly_static("warmup_seconds",
                                    [](py::object) { return engine::VariantTuner::kWarmupSeconds; });
  m.def("cross_core", [](int cpu_a, int cpu_b, std::size_t bytes, int reps) {
    machine::CrossCore c;
    {
      py::gil_scoped_release nogil;
      c = machine::cross_core(cpu_a, cpu_b, bytes, reps);
    }
    py::dict d;
    d["local_s"] = c.local_s;
    d["handoff_s"] = c.handoff_s;
    d["rewrite_s"] = c.rewrite_s;
    return d;
  }, py::arg("cpu_a"), py::arg("cpu_b"), py::arg("bytes"), py::arg("reps"),
     "Seconds for two threads pinned to cpu_a and cpu_b to move `bytes` of cache lines (the fastest of "
     "`reps` rounds): local (A copies privately), handoff (B copies out what A wrote), rewrite (A writes "
     "what B read). See csrc/machine/cross_core.h.");
  void bind_buffers(py::module_&); bind_buffers(m);  // the gradient buffer: csrc/bindings/buffers.cpp
  void bind_result_pool(py::module_&); bind_result_pool(m);  // collectives' new results: csrc/bindings/result_pool.cpp
  void register_ps(py::module_&); register_ps(m);  // the parameter server: csrc/bindings/ps.cpp
}
