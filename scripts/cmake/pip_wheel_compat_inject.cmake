# Given as CMAKE_PROJECT_INCLUDE when scripts/install.sh builds an UPSTREAM interface package
# (vision_msgs, tf2_msgs) against the ROS 2 pip wheels: runs objembed_msgs' include-path fix
# (msg/objembed_msgs/cmake/pip_wheel_compat.cmake) at the end of the package's top-level
# CMakeLists, after all its find_package() calls, without editing the package.
include("${CMAKE_CURRENT_LIST_DIR}/../../msg/objembed_msgs/cmake/pip_wheel_compat.cmake")
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL objembed_fix_wheel_python_includes)
