"""gdino-bag: segment a recorded rosbag2 or MCAP file offline (usage in :mod:`.cli`).

:mod:`.cli` the command line, :mod:`.job` one run, :mod:`.reader` the input bag, :mod:`.writer` the
output bag, :mod:`.schedule` the prompt schedule, :mod:`.planner` track ids and 3-D, :mod:`.fleet` many
bags on Ray (``--ray``), :mod:`.errors` the user-facing failures.
"""
from gdino_ros.tools.bag.cli import main

__all__ = ["main"]
