#include "transport/mpi_collectives.h"

#include <climits>
#include <mutex>
#include <vector>

#include "common/error.h"
#include "kernels/reduce.h"

namespace distml::transport {

namespace {

// Datatypes for the half types, created once per process and never freed
// (MPI frees them at MPI_Finalize).
struct HalfTypes {
  MPI_Datatype f16 = MPI_DATATYPE_NULL;
  MPI_Datatype bf16 = MPI_DATATYPE_NULL;
  MPI_Op ops[kNumOps];
};

template <Op kOp>
void half_op(void* in, void* inout, int* len, MPI_Datatype* type);

HalfTypes& half_types() {
  static HalfTypes types;
  static std::once_flag once;
  std::call_once(once, [] {
    DISTML_MPI(MPI_Type_contiguous(2, MPI_BYTE, &types.f16));
    DISTML_MPI(MPI_Type_commit(&types.f16));
    DISTML_MPI(MPI_Type_contiguous(2, MPI_BYTE, &types.bf16));
    DISTML_MPI(MPI_Type_commit(&types.bf16));
    for (auto& op : types.ops) op = MPI_OP_NULL;
    DISTML_MPI(MPI_Op_create(&half_op<Op::kSum>, 1, &types.ops[static_cast<int>(Op::kSum)]));
    DISTML_MPI(MPI_Op_create(&half_op<Op::kProd>, 1, &types.ops[static_cast<int>(Op::kProd)]));
    DISTML_MPI(MPI_Op_create(&half_op<Op::kMin>, 1, &types.ops[static_cast<int>(Op::kMin)]));
    DISTML_MPI(MPI_Op_create(&half_op<Op::kMax>, 1, &types.ops[static_cast<int>(Op::kMax)]));
  });
  return types;
}

template <Op kOp>
void half_op(void* in, void* inout, int* len, MPI_Datatype* type) {
  DType dtype = (*type == half_types().f16) ? DType::kFloat16 : DType::kBFloat16;
  kernels::reduce(inout, in, static_cast<std::size_t>(*len), dtype, kOp);
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return half_types().f16;
    case DType::kBFloat16: return half_types().bf16;
    case DType::kFloat32: return MPI_FLOAT;
    case DType::kFloat64: return MPI_DOUBLE;
    case DType::kInt8: return MPI_INT8_T;
    case DType::kInt16: return MPI_INT16_T;
    case DType::kInt32: return MPI_INT32_T;
    case DType::kInt64: return MPI_INT64_T;
    case DType::kUInt8: return MPI_UINT8_T;
    case DType::kUInt16: return MPI_UINT16_T;
    case DType::kUInt32: return MPI_UINT32_T;
    case DType::kUInt64: return MPI_UINT64_T;
  }
  DISTML_THROW(InvalidArgument, "no MPI datatype for dtype code " << static_cast<int>(dtype));
}

MPI_Op mpi_op(DType dtype, Op op) {
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16) {
    MPI_Op o = half_types().ops[static_cast<int>(op)];
    if (o == MPI_OP_NULL) DISTML_THROW(InvalidArgument, "op " << op_name(op) << " is not defined for " << dtype_name(dtype));
    return o;
  }
  switch (op) {
    case Op::kSum: return MPI_SUM;
    case Op::kProd: return MPI_PROD;
    case Op::kMin: return MPI_MIN;
    case Op::kMax: return MPI_MAX;
    case Op::kBand: return MPI_BAND;
    case Op::kBor: return MPI_BOR;
    case Op::kBxor: return MPI_BXOR;
    case Op::kAvg: break;
  }
  DISTML_THROW(InvalidArgument, "op " << op_name(op) << " has no MPI operator");
}

// MPI counts are ints: larger transfers go in pieces of this many elements.
constexpr std::size_t kMaxPiece = INT_MAX;

// A contiguous datatype of `bytes` bytes, for block-structured collectives
// whose blocks exceed INT_MAX bytes. RAII.
class ByteBlockType {
 public:
  explicit ByteBlockType(std::size_t bytes) {
    if (bytes <= kMaxPiece) {
      count_ = static_cast<int>(bytes);
      type_ = MPI_BYTE;
      return;
    }
    // bytes = q * kUnit + rem: a struct of q units then rem bytes.
    constexpr int kUnit = 1 << 20;
    std::size_t q = bytes / kUnit, rem = bytes % kUnit;
    if (q > kMaxPiece) DISTML_THROW(InvalidArgument, "block of " << bytes << " bytes is too large");
    MPI_Datatype unit;
    DISTML_MPI(MPI_Type_contiguous(kUnit, MPI_BYTE, &unit));
    MPI_Datatype units;
    DISTML_MPI(MPI_Type_contiguous(static_cast<int>(q), unit, &units));
    int lens[2] = {1, static_cast<int>(rem)};
    MPI_Aint disps[2] = {0, static_cast<MPI_Aint>(q * kUnit)};
    MPI_Datatype types[2] = {units, MPI_BYTE};
    MPI_Datatype whole;
    DISTML_MPI(MPI_Type_create_struct(2, lens, disps, types, &whole));
    DISTML_MPI(MPI_Type_create_resized(whole, 0, static_cast<MPI_Aint>(bytes), &type_));
    DISTML_MPI(MPI_Type_commit(&type_));
    MPI_Type_free(&whole);
    MPI_Type_free(&units);
    MPI_Type_free(&unit);
    owned_ = true;
    count_ = 1;
  }
  ~ByteBlockType() {
    if (owned_ && mpi_alive()) MPI_Type_free(&type_);
  }
  MPI_Datatype type() const { return type_; }
  int count() const { return count_; }

 private:
  MPI_Datatype type_ = MPI_BYTE;
  int count_ = 0;
  bool owned_ = false;
};

// Without a deadline, MPI's blocking collective (the true baseline). With
// one, its non-blocking twin, polled so that the deadline holds.
template <class Blocking, class NonBlocking>
void run(MpiComm& comm, const char* what, Blocking&& blocking, NonBlocking&& nonblocking) {
  if (!comm.has_deadline()) {
    blocking();
    return;
  }
  MPI_Request req = MPI_REQUEST_NULL;
  nonblocking(&req);
  comm.wait_collective(req, what);
}

}  // namespace

void mpi_allreduce(MpiComm& comm, const void* in, void* out, std::size_t count, DType dtype,
                   Op op) {
  const std::size_t elem = dtype_size(dtype);
  MPI_Datatype type = mpi_type(dtype);
  MPI_Op mop = mpi_op(dtype, op);
  const bool in_place = in == out;
  for (std::size_t done = 0; done < count || (count == 0 && done == 0);) {
    std::size_t n = std::min(kMaxPiece, count - done);
    const void* src = in_place ? MPI_IN_PLACE : static_cast<const char*>(in) + done * elem;
    void* dst = static_cast<char*>(out) + done * elem;
    run(comm, "finish MPI_Iallreduce",
        [&] { DISTML_MPI(MPI_Allreduce(src, dst, static_cast<int>(n), type, mop, comm.raw())); },
        [&](MPI_Request* rq) {
          DISTML_MPI(MPI_Iallreduce(src, dst, static_cast<int>(n), type, mop, comm.raw(), rq));
        });
    done += n;
    if (count == 0) break;
  }
}

void mpi_reduce(MpiComm& comm, const void* in, void* out, std::size_t count, DType dtype, Op op,
                int root) {
  const std::size_t elem = dtype_size(dtype);
  MPI_Datatype type = mpi_type(dtype);
  MPI_Op mop = mpi_op(dtype, op);
  const bool is_root = comm.rank() == root;
  const bool in_place = is_root && in == out;
  for (std::size_t done = 0; done < count || (count == 0 && done == 0);) {
    std::size_t n = std::min(kMaxPiece, count - done);
    const void* src = in_place ? MPI_IN_PLACE : static_cast<const char*>(in) + done * elem;
    void* dst = is_root ? static_cast<char*>(out) + done * elem : nullptr;
    run(comm, "finish MPI_Ireduce",
        [&] { DISTML_MPI(MPI_Reduce(src, dst, static_cast<int>(n), type, mop, root, comm.raw())); },
        [&](MPI_Request* rq) {
          DISTML_MPI(MPI_Ireduce(src, dst, static_cast<int>(n), type, mop, root, comm.raw(), rq));
        });
    done += n;
    if (count == 0) break;
  }
}

void mpi_broadcast(MpiComm& comm, void* buf, std::size_t bytes, int root) {
  for (std::size_t done = 0; done < bytes || (bytes == 0 && done == 0);) {
    std::size_t n = std::min(kMaxPiece, bytes - done);
    char* p = static_cast<char*>(buf) + done;
    run(comm, "finish MPI_Ibcast",
        [&] { DISTML_MPI(MPI_Bcast(p, static_cast<int>(n), MPI_BYTE, root, comm.raw())); },
        [&](MPI_Request* rq) {
          DISTML_MPI(MPI_Ibcast(p, static_cast<int>(n), MPI_BYTE, root, comm.raw(), rq));
        });
    done += n;
    if (bytes == 0) break;
  }
}

void mpi_allgather(MpiComm& comm, const void* in, void* out, std::size_t block_bytes) {
  ByteBlockType block(block_bytes);
  const char* own = static_cast<const char*>(out) + comm.rank() * block_bytes;
  const void* src = (in == own) ? MPI_IN_PLACE : in;
  run(comm, "finish MPI_Iallgather",
      [&] {
        DISTML_MPI(MPI_Allgather(src, block.count(), block.type(), out, block.count(),
                                 block.type(), comm.raw()));
      },
      [&](MPI_Request* rq) {
        DISTML_MPI(MPI_Iallgather(src, block.count(), block.type(), out, block.count(),
                                  block.type(), comm.raw(), rq));
      });
}

void mpi_reduce_scatter(MpiComm& comm, const void* in, void* out, const std::size_t* counts,
                        DType dtype, Op op) {
  std::vector<int> icounts(comm.size());
  for (int i = 0; i < comm.size(); ++i) {
    if (counts[i] > kMaxPiece) {
      DISTML_THROW(InvalidArgument, "algorithm='mpi' cannot reduce_scatter blocks of more than "
                                        << kMaxPiece << " elements; use algorithm='ring'");
    }
    icounts[i] = static_cast<int>(counts[i]);
  }
  MPI_Datatype type = mpi_type(dtype);
  MPI_Op mop = mpi_op(dtype, op);
  run(comm, "finish MPI_Ireduce_scatter",
      [&] { DISTML_MPI(MPI_Reduce_scatter(in, out, icounts.data(), type, mop, comm.raw())); },
      [&](MPI_Request* rq) {
        DISTML_MPI(MPI_Ireduce_scatter(in, out, icounts.data(), type, mop, comm.raw(), rq));
      });
}

void mpi_alltoall(MpiComm& comm, const void* in, void* out, std::size_t block_bytes) {
  ByteBlockType block(block_bytes);
  const void* src = (in == out) ? MPI_IN_PLACE : in;
  run(comm, "finish MPI_Ialltoall",
      [&] {
        DISTML_MPI(MPI_Alltoall(src, block.count(), block.type(), out, block.count(),
                                block.type(), comm.raw()));
      },
      [&](MPI_Request* rq) {
        DISTML_MPI(MPI_Ialltoall(src, block.count(), block.type(), out, block.count(),
                                 block.type(), comm.raw(), rq));
      });
}

namespace {

#if MPI_VERSION >= 4
using VCount = MPI_Count;
using VDispl = MPI_Aint;
#else
using VCount = int;
using VDispl = int;
#endif

// Sizes and offsets in the integer types of MPI's v-collectives.
void counts_and_displs(const std::size_t* sizes, int P, std::vector<VCount>* counts,
                       std::vector<VDispl>* displs) {
  counts->resize(P);
  displs->resize(P);
  std::size_t off = 0;
  for (int i = 0; i < P; ++i) {
#if MPI_VERSION < 4
    if (sizes[i] > kMaxPiece || off > kMaxPiece) {
      DISTML_THROW(InvalidArgument, "algorithm='mpi' needs MPI >= 4 for blocks or offsets beyond "
                                        << kMaxPiece << " bytes; use algorithm='pairwise'");
    }
#endif
    (*counts)[i] = static_cast<VCount>(sizes[i]);
    (*displs)[i] = static_cast<VDispl>(off);
    off += sizes[i];
  }
}

}  // namespace

#if MPI_VERSION >= 4
#define DISTML_V(name) name##_c
#else
#define DISTML_V(name) name
#endif

void mpi_alltoallv(MpiComm& comm, const void* in, const std::size_t* send, void* out,
                   const std::size_t* recv) {
  const int P = comm.size();
  std::vector<VCount> scounts, rcounts;
  std::vector<VDispl> sdispls, rdispls;
  counts_and_displs(send, P, &scounts, &sdispls);
  counts_and_displs(recv, P, &rcounts, &rdispls);
  run(comm, "finish MPI_Ialltoallv",
      [&] {
        DISTML_MPI(DISTML_V(MPI_Alltoallv)(in, scounts.data(), sdispls.data(), MPI_BYTE, out, rcounts.data(),
                                           rdispls.data(), MPI_BYTE, comm.raw()));
      },
      [&](MPI_Request* rq) {
        DISTML_MPI(DISTML_V(MPI_Ialltoallv)(in, scounts.data(), sdispls.data(), MPI_BYTE, out, rcounts.data(),
                                            rdispls.data(), MPI_BYTE, comm.raw(), rq));
      });
}

void mpi_allgatherv(MpiComm& comm, const void* in, void* out, const std::size_t* sizes) {
  const int P = comm.size(), r = comm.rank();
  std::vector<VCount> counts;
  std::vector<VDispl> displs;
  counts_and_displs(sizes, P, &counts, &displs);
  run(comm, "finish MPI_Iallgatherv",
      [&] {
        DISTML_MPI(DISTML_V(MPI_Allgatherv)(in, counts[r], MPI_BYTE, out, counts.data(), displs.data(), MPI_BYTE,
                                            comm.raw()));
      },
      [&](MPI_Request* rq) {
        DISTML_MPI(DISTML_V(MPI_Iallgatherv)(in, counts[r], MPI_BYTE, out, counts.data(), displs.data(),
                                             MPI_BYTE, comm.raw(), rq));
      });
}

#undef DISTML_V

void mpi_barrier(MpiComm& comm) {
  run(comm, "finish MPI_Ibarrier", [&] { DISTML_MPI(MPI_Barrier(comm.raw())); },
      [&](MPI_Request* rq) { DISTML_MPI(MPI_Ibarrier(comm.raw(), rq)); });
}

}  // namespace distml::transport
