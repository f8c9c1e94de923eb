"""The ROS-free inference pipeline: prompt and image in, a :class:`Result` out."""
