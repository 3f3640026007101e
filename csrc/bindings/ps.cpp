// pybind11 bindings of the parameter server (csrc/ps/): argument conversion
// and GIL release only. python/distml/ps/ validates the arrays (dtype,
// shapes, contiguity) and agrees the configuration across ranks first.
#include <mpi.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "ps/parameter_server.h"

namespace py = pybind11;
using namespace distml;

namespace {

std::vector<transport::Piece> pieces_of(const std::vector<py::array>& arrays, bool writable) {
  std::vector<transport::Piece> out;
  out.reserve(arrays.size());
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    const py::array& a = arrays[i];
    DISTML_CHECK_ARG(a.flags() & py::array::c_style, "array " << i << " is not C-contiguous");
    DISTML_CHECK_ARG(!writable || a.writeable(), "array " << i << " is read-only");
    out.push_back({a.data(), static_cast<std::size_t>(a.nbytes())});
  }
  return out;
}

ps::OptimizerConfig optimizer_config(int kind, const py::dict& hp) {
  ps::OptimizerConfig c;
  c.kind = static_cast<ps::OptimizerKind>(kind);
  auto get = [&](const char* key, double fallback) {
    return hp.contains(key) ? hp[key].cast<double>() : fallback;
  };
  c.lr = get("lr", c.lr);
  c.momentum = get("momentum", 0);
  c.dampening = get("dampening", 0);
  c.weight_decay = get("weight_decay", 0);
  c.nesterov = hp.contains("nesterov") && hp["nesterov"].cast<bool>();
  c.eps = get("eps", c.eps);
  if (hp.contains("betas")) {
    auto b = hp["betas"].cast<std::pair<double, double>>();
    c.beta1 = b.first;
    c.beta2 = b.second;
  }
  return c;
}

}  // namespace

void register_ps(py::module_& m) {
  py::class_<ps::ParameterServer>(m, "ParameterServer")
      .def(py::init([](std::int64_t fortran_handle, int dtype, int wire, std::vector<std::int64_t> segments,
                       std::vector<int> servers,
                       int mode, int staleness, int optimizer, const py::dict& hyperparameters, double timeout,
                       long poll_min_us, long poll_max_us, const std::vector<py::array>& initial,
                       std::int64_t piece_bytes, std::int64_t max_in_flight) {
             ps::Config c;
             c.dtype = static_cast<DType>(dtype);
             c.wire = static_cast<DType>(wire);
             c.total = 0;
             for (auto n : segments) c.total += n;
             c.segments = std::move(segments);
             c.servers = std::move(servers);
             c.mode = static_cast<ps::Mode>(mode);
             c.staleness = staleness;
             c.optimizer = optimizer_config(optimizer, hyperparameters);
             c.timeout = timeout;
             c.poll_min_us = poll_min_us;
             c.poll_max_us = poll_max_us;
             DISTML_CHECK_ARG(piece_bytes > 0, "piece_bytes must be positive, not " << piece_bytes);
             c.piece_bytes = piece_bytes;
             DISTML_CHECK_ARG(max_in_flight >= 0, "max_in_flight must be >= 0, not " << max_in_flight);
             c.max_in_flight = max_in_flight;
             auto pieces = pieces_of(initial, false);
             MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(fortran_handle));
             py::gil_scoped_release nogil;
             return std::make_unique<ps::ParameterServer>(comm, c, pieces);
           }),
           py::arg("fortran_handle"), py::arg("dtype"), py::arg("wire"), py::arg("segments"), py::arg("servers"),
           py::arg("mode"), py::arg("staleness"), py::arg("optimizer"), py::arg("hyperparameters"),
           py::arg("timeout"), py::arg("poll_min_us"), py::arg("poll_max_us"), py::arg("initial"),
           py::arg("piece_bytes") = std::int64_t{1} << 21, py::arg("max_in_flight") = 1)
      .def_property_readonly("is_server", &ps::ParameterServer::is_server)
      .def_property_readonly("is_worker", &ps::ParameterServer::is_worker)
      .def_property_readonly("bounds", &ps::ParameterServer::bounds)
      .def_property_readonly("closed", &ps::ParameterServer::closed)
      .def("start_progress", &ps::ParameterServer::start_progress)
      .def("serve",
           [](ps::ParameterServer& self, const std::vector<py::array>& out) {
             auto pieces = pieces_of(out, true);
             py::gil_scoped_release nogil;
             self.serve(pieces);
           })
      .def("push",
           [](ps::ParameterServer& self, const std::vector<py::array>& grads) {
             auto pieces = pieces_of(grads, false);
             py::gil_scoped_release nogil;
             self.push(pieces);
           })
      .def("pull",
           [](ps::ParameterServer& self, const std::vector<py::array>& out) {
             auto pieces = pieces_of(out, true);
             py::gil_scoped_release nogil;
             self.pull(pieces);
           })
      .def("step",
           [](ps::ParameterServer& self, const std::vector<py::array>& grads, const std::vector<py::array>& out) {
             auto in = pieces_of(grads, false);
             auto pieces = pieces_of(out, true);
             py::gil_scoped_release nogil;
             self.step(in, pieces);
           })
      .def("close",
           [](ps::ParameterServer& self, const std::vector<py::array>& out) {
             auto pieces = pieces_of(out, true);
             py::gil_scoped_release nogil;
             self.close(pieces);
           })
      .def("progress_cpu_seconds", &ps::ParameterServer::progress_cpu_seconds)
      .def("worker_stats",
           [](const ps::ParameterServer& self) {
             auto s = self.worker_stats();
             py::dict d;
             d["clock"] = s.clock;
             d["updates_applied"] = s.updates_applied;
             d["max_staleness"] = s.max_staleness;
             d["bytes_pushed"] = s.bytes_pushed;
             d["bytes_pulled"] = s.bytes_pulled;
             d["pulls"] = s.pulls;
             d["wait_seconds"] = s.wait_seconds;
             d["wait_for_server_seconds"] = s.wait_for_server_seconds;
             d["shard_versions"] = s.shard_versions;
             d["lost_workers"] = s.lost_workers;
             return d;
           })
      .def("server_stats", [](const ps::ParameterServer& self) {
        auto s = self.server_stats();
        py::dict d;
        d["version"] = s.version;
        d["updates_applied"] = s.updates_applied;
        d["max_staleness"] = s.max_staleness;
        d["requests"] = s.requests;
        d["bytes_received"] = s.bytes_received;
        d["bytes_sent"] = s.bytes_sent;
        d["shard_elements"] = s.shard_elements;
        d["optimizer_state_bytes"] = s.optimizer_state_bytes;
        d["applied_per_worker"] = s.applied_per_worker;
        d["busy_seconds"] = s.busy_seconds;
        d["most_in_flight"] = s.most_in_flight;
        d["lost_workers"] = s.lost_workers;
        return d;
      });
}
