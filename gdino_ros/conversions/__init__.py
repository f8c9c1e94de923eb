"""ROS message <-> numpy conversions, written against field names so rclpy and rosbags classes both work."""
