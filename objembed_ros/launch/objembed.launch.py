"""Launch the objembed_ros grounding node (ROS installs with `ros2 launch`).

    ros2 launch objembed_ros objembed.launch.py image:=/camera/color/image_raw \
        params_file:=/path/params.yaml checkpoint:=/models/ObjEmbed-2B namespace:=robot1

The node is a LifecycleNode; with autostart (default true) it configures and activates
itself. Set autostart:=false to drive it from a lifecycle manager instead. Fast DDS uses
the package's shared-memory profile unless FASTDDS_DEFAULT_PROFILES_FILE is already set.
pip installs, which have no `launch`, use `objembed-launch` (objembed_ros/ros/launcher.py).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

PACKAGE = "objembed_ros"
EXECUTABLE = "grounding_node"
NODE_NAME = "grounding_node"


def _share_dir() -> str:
    """The package share dir on an install, else the source tree (launch/..)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except Exception:  # running from the source tree
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description() -> LaunchDescription:
    share = _share_dir()
    args = [
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "params.yaml"),
                              description="grounding_node parameters (YAML)"),
        DeclareLaunchArgument("image", default_value="image",
                              description="colour image topic (remaps 'image')"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="ObjEmbed checkpoint dir (overrides params_file "
                                          "when set)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="node namespace (params_file is keyed /**, so its "
                                          "values apply under any namespace)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure + activate on start (false: leave it "
                                          "to a lifecycle manager)"),
    ]
    actions = list(args)
    if not os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        actions += [
            SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                   os.path.join(share, "config", "fastdds_shm.xml")),
            SetEnvironmentVariable("RMW_FASTRTPS_USE_QOS_FROM_XML", "0"),
        ]
    actions.append(OpaqueFunction(function=_node))
    return LaunchDescription(actions)


def _node(context: object, *_: object) -> list:
    """The LifecycleNode, with the command-line checkpoint (when given) over the params file."""
    from launch_ros.actions import LifecycleNode

    overrides = {"autostart": LaunchConfiguration("autostart").perform(context) == "true"}
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:
        overrides["checkpoint"] = checkpoint
    return [LifecycleNode(
        package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME,
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[LaunchConfiguration("params_file").perform(context), overrides],
        remappings=[("image", LaunchConfiguration("image").perform(context))],
        output="screen",
    )]
