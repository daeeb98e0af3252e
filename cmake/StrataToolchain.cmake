# Compiler launcher and warning flags for Strata's own targets.

find_program(STRATA_CCACHE ccache)
if(STRATA_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${STRATA_CCACHE})
  message(STATUS "Strata: using ccache (${STRATA_CCACHE})")
endif()

# strata_target_defaults(<target>): C++17 floor (never a hard
# CMAKE_CXX_STANDARD, so a newer LibTorch may raise it), warnings on our code
# only -- third-party headers come in as SYSTEM includes.
function(strata_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_17)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
    if(STRATA_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()
