"""``python -m gdino_ros.tools.bag``: run gdino-bag."""
import sys

from gdino_ros.tools.bag import main

if __name__ == "__main__":  # importing this module (as tools that list modules do) runs nothing
    sys.exit(main())
