# Defines the interface target `distml_mpi` and DISTML_MPI_VENDOR_HINT.
#
# DISTML_MPI=pypi: the `mpich` wheel installed in the (isolated) build
# environment provides mpi.h and libmpi.so. At run time the same soname,
# libmpi.so.12, comes from the `mpich` wheel in the user's environment; the
# module's RUNPATH points from site-packages/distml to <prefix>/lib, and in any
# case mpi4py has loaded that library before distml's module is imported.
#
# DISTML_MPI=system: CMake's FindMPI (mpicxx on PATH, or MPI_HOME).
add_library(distml_mpi INTERFACE)

if(DISTML_MPI STREQUAL "pypi")
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import sys, sysconfig; print(sysconfig.get_paths()['data'])"
    OUTPUT_VARIABLE _py_data OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(_candidates "")
  # The build environment's prefix, then the interpreter's.
  foreach(p IN ITEMS "$ENV{DISTML_MPI_PREFIX}" ${_py_data})
    if(p)
      list(APPEND _candidates ${p})
    endif()
  endforeach()
  # pip's isolated builds put packages under an overlay prefix on PATH.
  find_program(_mpicc NAMES mpicc NO_CACHE)
  if(_mpicc)
    get_filename_component(_bin ${_mpicc} DIRECTORY)
    get_filename_component(_prefix ${_bin} DIRECTORY)
    list(INSERT _candidates 0 ${_prefix})
  endif()
  set(_found "")
  foreach(p IN LISTS _candidates)
    if(EXISTS "${p}/include/mpi.h" AND EXISTS "${p}/lib/libmpi.so.12")
      set(_found ${p})
      break()
    endif()
  endforeach()
  if(NOT _found)
    message(FATAL_ERROR "DISTML_MPI=pypi: no mpich wheel found (looked in ${_candidates}). "
                        "Install the `mpich` package, or build with DISTML_MPI=system.")
  endif()
  message(STATUS "distml: MPI from the mpich wheel at ${_found}")
  target_include_directories(distml_mpi INTERFACE ${_found}/include)
  target_link_libraries(distml_mpi INTERFACE ${_found}/lib/libmpi.so.12)
  # site-packages/distml -> site-packages -> pythonX.Y -> lib (a venv's or prefix's)
  set_target_properties(_core PROPERTIES
    INSTALL_RPATH "$ORIGIN/../../.."
    BUILD_WITH_INSTALL_RPATH ON)
elseif(DISTML_MPI STREQUAL "system")
  # Only MPI's C API is used; the project is C++, so FindMPI looks through
  # mpicxx (or MPI_CXX_COMPILER), without the deprecated C++ bindings.
  set(MPI_CXX_SKIP_MPICXX ON)
  find_package(MPI REQUIRED COMPONENTS CXX)
  message(STATUS "distml: system MPI ${MPI_CXX_LIBRARY_VERSION_STRING} (${MPI_CXX_LIBRARIES})")
  target_link_libraries(distml_mpi INTERFACE MPI::MPI_CXX)
  set_target_properties(_core PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
else()
  message(FATAL_ERROR "DISTML_MPI must be 'pypi' or 'system', not '${DISTML_MPI}'")
endif()
