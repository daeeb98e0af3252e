# cmake --install: Strata as a library other CMake projects use.
#
#   cmake --install build --prefix /opt/strata
#   # in the user's project:
#   find_package(Strata REQUIRED)        # CMAKE_PREFIX_PATH=/opt/strata
#   target_link_libraries(app PRIVATE Strata::trainer)   # or Strata::launch, Strata::edge
#
# Installs the headers (under include/strata, as in the source tree), the
# static libraries, and lib/cmake/Strata/{StrataConfig,StrataTargets}.cmake,
# which find the same dependencies (LibTorch, CLI11, yaml-cpp, ZLIB; MPI
# and gRPC/Protobuf/SQLite/OpenSSL where Strata was built with them).
include(CMakePackageConfigHelpers)

set(_strata_export strata_core strata_torch strata_distributed strata_trainer strata_launch)
set_target_properties(strata_core PROPERTIES EXPORT_NAME core)
set_target_properties(strata_torch PROPERTIES EXPORT_NAME torch)
set_target_properties(strata_distributed PROPERTIES EXPORT_NAME distributed)
set_target_properties(strata_trainer PROPERTIES EXPORT_NAME trainer)
set_target_properties(strata_launch PROPERTIES EXPORT_NAME launch)
if(TARGET strata_mpi)
  list(APPEND _strata_export strata_mpi)
  set_target_properties(strata_mpi PROPERTIES EXPORT_NAME mpi)
endif()
if(TARGET strata_federated)
  list(APPEND _strata_export strata_fedproto strata_fedwire strata_edge strata_federated)
  set_target_properties(strata_fedproto PROPERTIES EXPORT_NAME fedproto)
  set_target_properties(strata_fedwire PROPERTIES EXPORT_NAME fedwire)
  set_target_properties(strata_edge PROPERTIES EXPORT_NAME edge)
  set_target_properties(strata_federated PROPERTIES EXPORT_NAME federated)
  install(FILES ${STRATA_FED_GEN_HEADERS} DESTINATION ${STRATA_INSTALL_INCLUDEDIR})
endif()

install(TARGETS ${_strata_export} EXPORT StrataTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY core distributed trainer federated
        DESTINATION ${STRATA_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
install(FILES ${CMAKE_BINARY_DIR}/generated/strata/config.h
        DESTINATION ${STRATA_INSTALL_INCLUDEDIR}/strata)
install(TARGETS strata-train strata-export RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

set(_strata_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/Strata)
install(EXPORT StrataTargets NAMESPACE Strata:: DESTINATION ${_strata_cmake_dir})
set(STRATA_CONFIG_HAVE_MPI ${STRATA_HAVE_MPI})
set(STRATA_CONFIG_HAVE_FEDERATED ${STRATA_HAVE_FEDERATED})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/StrataConfig.cmake.in
                              ${CMAKE_BINARY_DIR}/StrataConfig.cmake
                              INSTALL_DESTINATION ${_strata_cmake_dir})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/StrataConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/StrataConfig.cmake ${CMAKE_BINARY_DIR}/StrataConfigVersion.cmake
        DESTINATION ${_strata_cmake_dir})
