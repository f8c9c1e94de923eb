"""``python -m gdino_ros.node``: run segment_node (what the ``segment_node`` executable does)."""
import sys

from gdino_ros.node import main

if __name__ == "__main__":  # importing this module (as tools that list modules do) runs nothing
    sys.exit(main())
