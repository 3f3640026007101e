// pybind11 bindings of the result pool (csrc/buffers/result_pool.h): numpy
// arrays whose memory is a pool block, kept alive by the array's base.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "buffers/result_pool.h"

namespace py = pybind11;
using distml::buffers::ResultPool;

void bind_result_pool(py::module_& m) {
  py::class_<ResultPool, std::shared_ptr<ResultPool>>(m, "ResultPool")
      .def(py::init<std::size_t>(), py::arg("cap_bytes"))
      .def(
          "empty",
          [](ResultPool& pool, const std::vector<py::ssize_t>& shape, const py::object& dtype) {
            py::dtype dt = py::dtype::from_args(dtype);
            std::size_t bytes = static_cast<std::size_t>(dt.itemsize());
            for (auto d : shape) bytes *= static_cast<std::size_t>(d);
            std::shared_ptr<void> block;
            {
              py::gil_scoped_release nogil;
              block = pool.take(bytes);
            }
            void* p = block.get();
            auto* owner = new std::shared_ptr<void>(std::move(block));
            py::capsule base(owner, [](void* o) { delete static_cast<std::shared_ptr<void>*>(o); });
            return py::array(dt, shape, p, base);
          },
          py::arg("shape"), py::arg("dtype"),
          "An uninitialised C-contiguous array in a pool block, which returns to the pool when the "
          "array (and every view of it) is gone.")
      .def("close", &ResultPool::close)
      .def_property_readonly("cap_bytes", &ResultPool::cap_bytes)
      .def("stats", [](const ResultPool& pool) {
        const auto s = pool.stats();
        py::dict d;
        d["cached_bytes"] = s.cached_bytes;
        d["cached_blocks"] = s.cached_blocks;
        d["held_bytes"] = s.held_bytes;
        d["held_blocks"] = s.held_blocks;
        d["mapped"] = s.mapped;
        d["reused"] = s.reused;
        return d;
      });
}
