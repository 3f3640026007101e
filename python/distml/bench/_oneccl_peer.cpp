// oneCCL's allreduce for the benchmark's peer rows (distml.bench.peers).
//
// Built at first use by torch's cpp_extension against the CPU archive that
// the oneccl-devel wheel ships (lib/ccl/cpu/lib/libccl.a); the shared
// libraries of the oneccl wheels are SYCL builds that fail without a GPU
// driver (see bench/results/peers.md). Not part of distml: only the bench
// loads it.
//
// Set-up, on all ranks: rank 0 calls main_address() and sends the bytes to
// the others (the bench uses mpi4py), then every rank calls connect(), which
// creates the communicator (collective). allreduce() sums float32 in place,
// without the GIL.

#include <torch/extension.h>

#include <oneapi/ccl.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

// The archive calls ITT's tracing hooks through these pointers when they are
// set; null pointers mean "no tracer attached", so the archive links
// without the ITT library.
extern "C" {
void* __itt_domain_create_ptr__3_0 = nullptr;
void* __itt_event_create_ptr__3_0 = nullptr;
void* __itt_event_end_ptr__3_0 = nullptr;
void* __itt_event_start_ptr__3_0 = nullptr;
void* __itt_metadata_add_ptr__3_0 = nullptr;
void* __itt_string_handle_create_ptr__3_0 = nullptr;
void* __itt_task_begin_ptr__3_0 = nullptr;
void* __itt_task_end_ptr__3_0 = nullptr;
void* __itt_thread_set_name_ptr__3_0 = nullptr;
}

namespace {

// One communicator per process: the bench opens the peer once.
struct State {
    bool initialised = false;
    ccl::shared_ptr_class<ccl::kvs> kvs;
    std::vector<ccl::communicator> comm;  // empty until connect()
};

State& state() {
    static State s;
    return s;
}

void ensure_init() {
    if (!state().initialised) {
        ccl::init();
        state().initialised = true;
    }
}

py::bytes main_address() {
    ensure_init();
    state().kvs = ccl::create_main_kvs();
    auto addr = state().kvs->get_address();
    return py::bytes(reinterpret_cast<const char*>(addr.data()), addr.size());
}

void connect(int size, int rank, const std::string& address) {
    ensure_init();
    if (!state().kvs) {  // not rank 0: join the main key-value store
        ccl::kvs::address_type addr{};
        TORCH_CHECK(address.size() == addr.size(), "oneCCL address of ", address.size(), " bytes, expected ",
                    addr.size());
        std::memcpy(addr.data(), address.data(), addr.size());
        state().kvs = ccl::create_kvs(addr);
    }
    state().comm.clear();
    state().comm.push_back(ccl::create_communicator(size, rank, state().kvs));
}

void allreduce(std::uintptr_t address, std::size_t count) {
    TORCH_CHECK(!state().comm.empty(), "oneCCL peer: connect() first");
    auto* buf = reinterpret_cast<float*>(address);
    py::gil_scoped_release nogil;
    ccl::allreduce(buf, buf, count, ccl::reduction::sum, state().comm.front()).wait();
}

void disconnect() {
    state().comm.clear();
    state().kvs.reset();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("main_address", &main_address, "rank 0: create the key-value store, return its address");
    m.def("connect", &connect, "create the communicator (all ranks)", py::arg("size"), py::arg("rank"),
          py::arg("address"));
    m.def("allreduce", &allreduce, "float32 sum in place", py::arg("address"), py::arg("count"));
    m.def("disconnect", &disconnect, "drop the communicator");
}
