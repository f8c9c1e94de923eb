"""pip entry point for the ROS-free core; metadata lives in setup.cfg."""
from setuptools import setup

setup()
