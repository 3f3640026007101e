// The core's one error hierarchy. Every failure is thrown as one of these,
// built by DISTML_THROW so the message carries its source location; the
// bindings map each class to a Python exception (see bindings/module.cpp).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace distml {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller's mistake, found before any byte moves (Python: ValueError).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// An MPI call returned an error; carries MPI's error class and string.
class MpiError : public Error {
 public:
  MpiError(const std::string& what, int code, int error_class, std::string mpi_string)
      : Error(what), code_(code), error_class_(error_class), mpi_string_(std::move(mpi_string)) {}
  int code() const { return code_; }
  int error_class() const { return error_class_; }
  const std::string& mpi_string() const { return mpi_string_; }

 private:
  int code_;
  int error_class_;
  std::string mpi_string_;
};

// A collective did not complete before the communicator's deadline.
class Timeout : public Error {
 public:
  using Error::Error;
};

// Memory a collective needs could not be allocated (Python: MemoryError).
class NoMemory : public Error {
 public:
  using Error::Error;
};

// Ranks called a collective with arguments that disagree.
class Mismatch : public Error {
 public:
  using Error::Error;
};

// The communicator can no longer be used (freed, or broken by a timeout).
class Unusable : public Error {
 public:
  using Error::Error;
};

namespace detail {
// The path below csrc/, so messages do not carry the build machine's layout.
constexpr const char* short_file(const char* path) {
  const char* tail = path;
  for (const char* p = path; *p; ++p) {
    if (p[0] == 'c' && p[1] == 's' && p[2] == 'r' && p[3] == 'c' && p[4] == '/') tail = p + 5;
  }
  return tail;
}
}  // namespace detail

}  // namespace distml

#define DISTML_THROW(Type, msg)                                        \
  do {                                                                 \
    std::ostringstream distml_os_;                                     \
    distml_os_ << msg << " [" << ::distml::detail::short_file(__FILE__) << ":" << __LINE__ << "]";   \
    throw ::distml::Type(distml_os_.str());                            \
  } while (0)

#define DISTML_CHECK_ARG(cond, msg)                 \
  do {                                              \
    if (!(cond)) DISTML_THROW(InvalidArgument, msg); \
  } while (0)
