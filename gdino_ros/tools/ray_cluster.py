"""The Ray side the tools share: connect to a cluster, check every node sees the files, host Segmenters.

``--ray`` without an address starts a local Ray instance on this machine (bound to 127.0.0.1, nothing
leaves it); ``--ray ADDRESS`` joins a running cluster (``auto``, ``HOST:PORT`` of the head, or
``ray://HOST:10001``). Every worker is a :class:`SegmenterHost` actor that opens one Segmenter when it
starts and keeps it for its whole life; it asks for one GPU when the cluster has GPUs, one CPU otherwise.
A worker that dies (its node lost, the process killed) is restarted by Ray and its call retried, up to
:data:`RETRIES` times; after that the call fails and the tool reports it.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gdino_ros.errors import InputError, ModelError, OutputError, UsageError

RETRIES = 3  # restarts of a dead worker, and retries of the call it was running
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # a local instance's shared memory; Ray spills to disk beyond


def connect(address: str | None, prog: str) -> Any:
    """Start a local Ray instance (``address`` None) or join the cluster at ``address``; return ``ray``.

    A missing ``ray`` package or an address that does not answer is a one-line UsageError.
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the ray package: pip install 'gdino_ros[ray]'") from None
    if ray.is_initialized():  # the caller (a test, a notebook) already joined a cluster
        return ray
    if address is None:
        # Loopback only: a local instance needs no other interface and must not offer itself on one.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing is reported to Ray's servers
        ray.init(
            include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
        )
        return ray
    hint = "start one with `ray start --head` and give its address, or drop the address to run locally"
    refused = _refused(address)  # Ray itself retries a dead address for minutes
    if refused:
        raise UsageError(f"no Ray cluster answers at {address} ({refused}); {hint}")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as error:  # ConnectionError, TimeoutError, ValueError: whichever way it fails
        first = str(error).splitlines()[0] if str(error) else ""
        why = f"{type(error).__name__}: {first}"
        raise UsageError(f"no Ray cluster answers at {address} ({why}); {hint}") from None
    return ray


def _refused(address: str, timeout_s: float = 5.0) -> str:
    """Return why nothing listens at ``HOST:PORT`` or ``ray://HOST:PORT`` ("" if it answers, or ``auto``)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return "" if address == "auto" else "expected auto, HOST:PORT or ray://HOST:PORT"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        return error.strerror or type(error).__name__
    return ""


def _missing(paths: Sequence[str], writable: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """On one node: its address, the paths it cannot see and the folders it cannot write in."""
    import ray

    unseen = [p for p in paths if not os.path.exists(p)]
    locked = [p for p in writable if not os.access(p, os.W_OK | os.X_OK)]
    return str(ray.util.get_node_ip_address()), unseen, locked  # type: ignore[no-untyped-call]


def check_nodes(ray: Any, model: Path, inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """Refuse to start unless every alive node sees the model and inputs and can write the output folders.

    Workers read and write the same paths as this machine: they must be on a filesystem every node mounts
    at the same place.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_missing)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    paths = [str(model.resolve()), *(str(p.resolve()) for p in inputs)]
    folders = sorted({str(p.resolve()) for p in outputs})
    on_node = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, False)) for n in nodes]
    answers = ray.get([task.remote(paths, folders) for task in on_node])
    for node_ip, unseen, locked in answers:
        if paths[0] in unseen:
            raise ModelError(
                f"Ray node {node_ip} has no model file {paths[0]}; put it on a filesystem every node mounts "
                "at the same path"
            )
        if unseen:
            more = f" and {len(unseen) - 1} more" if len(unseen) > 1 else ""
            raise InputError(
                f"Ray node {node_ip} cannot see {unseen[0]}{more}; inputs must be on a filesystem every "
                "node mounts at the same path"
            )
        if locked:
            raise OutputError(
                f"Ray node {node_ip} cannot write in {locked[0]}; outputs must be on a filesystem every "
                "node mounts at the same path, writable by the Ray workers"
            )


class SegmenterHost:
    """A Ray worker holding one Segmenter, opened once, for every call it runs.

    ``call(fn, *args)`` runs ``fn(segmenter, *args)`` on the worker: the tools send module-level
    functions, which Ray ships by reference (every node has gdino_ros installed).
    """

    def __init__(self, open_kwargs: dict[str, Any]) -> None:
        from gdino_ros.core.segmenter import Segmenter

        self.segmenter = Segmenter.from_model(**open_kwargs)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(segmenter, *args)``."""
        return fn(self.segmenter, *args)


def start_workers(ray: Any, count: int | None, open_kwargs: dict[str, Any], name: str) -> list[Any]:
    """Start ``count`` SegmenterHost actors (default: one per GPU, else one per CPU of the cluster).

    Actors are named ``<name>-<run>-<i>`` in the default namespace so an operator can find them in
    ``ray list actors``.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    per_worker = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    count = count or gpus or max(int(resources.get("CPU", 1)), 1)
    host = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES, **per_worker)(SegmenterHost)
    run_id = uuid.uuid4().hex[:8]
    return [host.options(name=f"{name}-{run_id}-{i}").remote(open_kwargs) for i in range(count)]


def add_ray_arguments(parser: Any) -> None:
    """Add --ray [ADDRESS] and --workers N to an argparse parser."""
    parser.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="run on Ray: without ADDRESS a local instance on this machine, else the cluster at ADDRESS "
        "(auto, HOST:PORT or ray://HOST:10001); data and model must be on paths every node sees",
    )
    parser.add_argument(
        "--workers", type=int, help="with --ray: Segmenters to run (default: one per GPU, else per CPU)"
    )


def ray_address(args: Any) -> str | None:
    """Return the --ray value as :func:`connect` takes it (None: a local instance)."""
    return str(args.ray) or None


def failure_message(error: BaseException) -> str:
    """One line for a call that failed on a worker: the user error it raised, or what Ray says happened."""
    from ray.exceptions import RayTaskError

    cause = error.cause if isinstance(error, RayTaskError) else None
    if isinstance(cause, Exception) and not isinstance(cause, RayTaskError):
        from gdino_ros.errors import GdinoError

        if isinstance(cause, GdinoError):
            return str(cause)
        return f"{type(cause).__name__}: {cause}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"the Ray worker failed ({type(error).__name__}: {first})"
