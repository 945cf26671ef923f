"""objembed_ros: an ament_python package that also installs with plain pip."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "objembed_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    package_data={PACKAGE: ["config/*.yaml", "config/*.xml"]},
    include_package_data=True,
    zip_safe=False,
    maintainer="objembed_ros developers",
    maintainer_email="objembed-ros@example.com",
    description="Ground language queries in camera images with ObjEmbed (ROS 2).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "objembed-ground = objembed_ros.cli:main",
            "grounding_node = objembed_ros.ros.node:main",
            "objembed-launch = objembed_ros.ros.launcher:main",
            "objembed-replay = objembed_ros.replay.cli:main",
        ],
    },
)
