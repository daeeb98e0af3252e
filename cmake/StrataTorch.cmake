# LibTorch discovery for Strata.
#
# Prints the LibTorch version, CUDA availability and C++ ABI at configure time
# and fails early when LibTorch's libstdc++ ABI differs from the one the rest
# of the system's C++ libraries (yaml-cpp, GoogleTest, gRPC) were built with:
# that mismatch otherwise surfaces as pages of undefined std::__cxx11 symbols
# at link time.
#
# Provides:
#   strata::torch          INTERFACE target: LibTorch with SYSTEM includes
#   strata_use_torch_pch(<target>)  reuse one precompiled <torch/torch.h>

find_package(Torch REQUIRED)

# LibTorch's ABI as it tells us (TORCH_CXX_FLAGS carries the define).
if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=([01])")
  set(STRATA_TORCH_ABI ${CMAKE_MATCH_1})
else()
  set(STRATA_TORCH_ABI 1)
endif()

# The toolchain's default ABI, which Debian's C++ libraries use.
include(CheckCXXSourceCompiles)
check_cxx_source_compiles("
#include <string>
#if !_GLIBCXX_USE_CXX11_ABI
#error old ABI
#endif
int main() { return 0; }" STRATA_SYSTEM_CXX11_ABI)
if(STRATA_SYSTEM_CXX11_ABI)
  set(STRATA_SYSTEM_ABI 1)
else()
  set(STRATA_SYSTEM_ABI 0)
endif()

set(STRATA_TORCH_CUDA OFF)
if(TARGET torch_cuda OR CUDA_FOUND OR TORCH_CUDA_LIBRARIES)
  set(STRATA_TORCH_CUDA ON)
endif()

message(STATUS "Strata: LibTorch ${Torch_VERSION} at ${TORCH_INSTALL_PREFIX}")
message(STATUS "Strata: LibTorch CUDA=${STRATA_TORCH_CUDA} _GLIBCXX_USE_CXX11_ABI=${STRATA_TORCH_ABI} (system libraries: ${STRATA_SYSTEM_ABI})")

if(NOT STRATA_TORCH_ABI EQUAL STRATA_SYSTEM_ABI)
  message(FATAL_ERROR
    "LibTorch at ${TORCH_INSTALL_PREFIX} was built with "
    "_GLIBCXX_USE_CXX11_ABI=${STRATA_TORCH_ABI}, but this system's C++ "
    "libraries (yaml-cpp, GoogleTest, gRPC) use _GLIBCXX_USE_CXX11_ABI="
    "${STRATA_SYSTEM_ABI}; linking them together fails with undefined "
    "std::__cxx11 symbols.\n"
    "Fix: point CMAKE_PREFIX_PATH at a LibTorch built with the cxx11 ABI "
    "(Debian's libtorch-dev, a 'cxx11-abi' LibTorch archive, or the Python "
    "torch >= 2.7 wheel: python3 -c 'import torch;print(torch.utils.cmake_prefix_path)').")
endif()

# A pip wheel's LibTorch ships protobuf headers of its own version in its
# include directory; on the include path they would shadow the system
# protobuf that gRPC and libonnx-dev are built with (and that Strata's
# generated code needs). Strata reads that directory through a view without
# google/ (symbolic links to every other entry); LibTorch's headers that
# Strata includes do not use protobuf.
set(STRATA_TORCH_INCLUDE_DIRS "")
foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
  # (A system include directory, e.g. Debian's /usr/include, holds the
  # system protobuf itself: nothing to hide.)
  if(EXISTS "${_dir}/google/protobuf/message.h" AND
     NOT _dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
    set(_view "${CMAKE_BINARY_DIR}/torch-include")
    file(MAKE_DIRECTORY "${_view}")
    file(GLOB _entries RELATIVE "${_dir}" "${_dir}/*")
    foreach(_e IN LISTS _entries)
      if(NOT _e STREQUAL "google" AND NOT EXISTS "${_view}/${_e}")
        file(CREATE_LINK "${_dir}/${_e}" "${_view}/${_e}" SYMBOLIC)
      endif()
    endforeach()
    message(STATUS "Strata: LibTorch bundles protobuf headers; its includes are read through "
                   "${_view} (without google/), so gRPC and ONNX compile against the system protobuf")
    list(APPEND STRATA_TORCH_INCLUDE_DIRS "${_view}")
    # FindProtobuf would take the bundled headers too (CMAKE_PREFIX_PATH
    # leads to them) while linking the system library: point it at the
    # system's headers unless the user did.
    find_path(STRATA_SYSTEM_PROTOBUF_INCLUDE google/protobuf/message.h
              NO_CMAKE_PATH NO_CMAKE_ENVIRONMENT_PATH NO_PACKAGE_ROOT_PATH)
    if(STRATA_SYSTEM_PROTOBUF_INCLUDE AND NOT Protobuf_INCLUDE_DIR)
      set(Protobuf_INCLUDE_DIR "${STRATA_SYSTEM_PROTOBUF_INCLUDE}" CACHE PATH
          "protobuf headers (the system's, not LibTorch's bundled ones)")
    endif()
  else()
    list(APPEND STRATA_TORCH_INCLUDE_DIRS "${_dir}")
  endif()
endforeach()

add_library(strata_torch INTERFACE)
add_library(strata::torch ALIAS strata_torch)
target_link_libraries(strata_torch INTERFACE ${TORCH_LIBRARIES})
# SYSTEM: LibTorch's own warnings are not ours to fix.
# (Installed, the target names LibTorch's own directories: the view is of this build.)
target_include_directories(strata_torch SYSTEM INTERFACE
  "$<BUILD_INTERFACE:${STRATA_TORCH_INCLUDE_DIRS}>" "$<INSTALL_INTERFACE:${TORCH_INCLUDE_DIRS}>")
# Non-include flags LibTorch asks for (the ABI define above).
separate_arguments(_strata_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
list(FILTER _strata_torch_flags EXCLUDE REGEX "^-I")
target_compile_options(strata_torch INTERFACE ${_strata_torch_flags})
# Everything compiles with -pthread (it defines _REENTRANT): gRPC's targets
# add it to their users, and a precompiled header is only reused by code
# compiled with the same defines.
# (Torch's config already created Threads::Threads without the flag.)
target_compile_options(strata_torch INTERFACE -pthread)
target_link_options(strata_torch INTERFACE -pthread)

# One precompiled <torch/torch.h> shared by every Strata target: parsing it
# costs ~30 s per translation unit on a 2-core machine.
add_library(strata_pch OBJECT ${CMAKE_CURRENT_LIST_DIR}/pch.cpp)
target_link_libraries(strata_pch PUBLIC strata::torch)
target_compile_features(strata_pch PUBLIC cxx_std_17)
set_target_properties(strata_pch PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_precompile_headers(strata_pch PRIVATE <torch/torch.h>)

# A PCH is only valid for code compiled with the same -fPIC/-fPIE setting, and
# CMake gives executables -fPIE but libraries -fPIC; -fPIC objects link into
# (PIE) executables just as well, so every PCH user compiles with -fPIC.
function(strata_use_torch_pch target)
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    target_compile_options(${target} PRIVATE -fPIC)
  else()
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  endif()
  target_precompile_headers(${target} REUSE_FROM strata_pch)
endfunction()
