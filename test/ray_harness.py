"""A local Ray instance for the --ray tests: two CPUs, no dashboard, a small object store, every socket on
127.0.0.1, no usage statistics sent anywhere."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_ray() -> Iterator[Any]:
    """Start the instance, yield ``ray``, shut it down."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node address from loopback, no probing
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
        _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
    )
    try:
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield ray
    finally:
        ray.shutdown()
