// Owners of MPI handles, so that a constructor that throws halfway frees what
// it had made. Destroying an owner frees its handle; an object whose life
// ends outside an agreed collective point (a communicator the garbage
// collector takes) calls abandon() first and leaves the handle to
// MPI_Finalize, since freeing is collective and a destructor's timing is not
// agreed across ranks.
#pragma once

#include <mpi.h>

namespace distml::transport {

// Is MPI still usable (initialised and not finalised)?
bool mpi_alive();

template <class Handle, Handle (*Null)(), int (*Free)(Handle*)>
class MpiHandle {
 public:
  MpiHandle() = default;
  explicit MpiHandle(Handle h) : h_(h) {}
  ~MpiHandle() { reset(); }
  MpiHandle(const MpiHandle&) = delete;
  MpiHandle& operator=(const MpiHandle&) = delete;

  Handle get() const { return h_; }
  // For MPI calls that create the handle.
  Handle* out() {
    reset();
    return &h_;
  }
  explicit operator bool() const { return h_ != Null(); }
  // Frees the handle now (collective for communicators and windows).
  void reset() {
    if (h_ != Null() && mpi_alive()) Free(&h_);
    h_ = Null();
  }
  // Forgets the handle without freeing it.
  void abandon() { h_ = Null(); }

 private:
  Handle h_ = Null();
};

namespace detail {
inline MPI_Comm null_comm() { return MPI_COMM_NULL; }
inline MPI_Win null_win() { return MPI_WIN_NULL; }
inline MPI_Info null_info() { return MPI_INFO_NULL; }
inline int free_comm(MPI_Comm* c) { return MPI_Comm_free(c); }
inline int free_win(MPI_Win* w) { return MPI_Win_free(w); }
inline int free_info(MPI_Info* i) { return MPI_Info_free(i); }
}  // namespace detail

using UniqueComm = MpiHandle<MPI_Comm, detail::null_comm, detail::free_comm>;
using UniqueWin = MpiHandle<MPI_Win, detail::null_win, detail::free_win>;
using UniqueInfo = MpiHandle<MPI_Info, detail::null_info, detail::free_info>;

}  // namespace distml::transport
