# The ROS 2 wheels on PyPI were built in a manylinux container: the
# INTERFACE_INCLUDE_DIRECTORIES of their `<pkg>__rosidl_generator_py` targets point at
# that container's Python and numpy headers (/opt/python/cpXY-cpXY/...), which do not
# exist here, and CMake refuses imported targets with missing include paths.
# Replace only the missing entries with this interpreter's Python and numpy headers.
# On a normal ROS 2 install every path exists and nothing is changed.
# Call it last: it scans every imported target this directory has seen, transitive ones too.
function(objembed_fix_wheel_python_includes)
  set(_need_fix FALSE)
  get_property(_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(_tgt IN LISTS _targets)
    get_target_property(_incs ${_tgt} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _incs)
      continue()
    endif()
    set(_fixed "")
    set(_changed FALSE)
    foreach(_inc IN LISTS _incs)
      if(NOT EXISTS "${_inc}" AND _inc MATCHES "^/opt/python/")
        set(_changed TRUE)
      else()
        list(APPEND _fixed "${_inc}")
      endif()
    endforeach()
    if(_changed)
      if(NOT _need_fix)
        find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
        set(_need_fix TRUE)
      endif()
      list(APPEND _fixed ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
      set_target_properties(${_tgt} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_fixed}")
      message(STATUS "objembed_msgs: rewrote wheel include paths of ${_tgt}")
    endif()
  endforeach()
endfunction()
