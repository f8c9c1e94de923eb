"""gdino-bag's /gdino/* topics carry the QoS the live node really offers (#13 item 15): read from the
node's own publishers, so a change to the node's QoS that the bag writer does not follow fails here.
Liveliness and the durations are left at the system default by the node; the bag stores them as a
recorder sees them on the wire (automatic, infinite)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_fixtures import make_contract_onnx

from gdino_ros.conversions.messages import OUTPUT_TYPES
from gdino_ros.tools.bag.writer import output_qos

pytestmark = pytest.mark.slow  # a real node in a real rclpy context


def test_bag_output_qos_is_the_nodes(ros_context: Any, vocab_path: Path, tmp_path: Path) -> None:
    from rclpy.parameter import Parameter

    from gdino_ros.node import SegmentNode

    model = make_contract_onnx(tmp_path / "model.onnx", input_hw=(64, 96), rela=False)
    overrides = [Parameter("model", value=str(model)), Parameter("tokenizer", value=str(vocab_path))]
    node = SegmentNode(context=ros_context, parameter_overrides=overrides)
    try:
        want = output_qos()
        offered = {p.topic_name: p.qos_profile for p in node.publishers}
        for leaf in OUTPUT_TYPES:
            got = offered[node.resolve_topic_name(f"gdino/{leaf}")]
            assert (got.history.value, got.depth, got.reliability.value, got.durability.value) == (
                want.history.value, want.depth, want.reliability.value, want.durability.value), leaf
    finally:
        node.destroy_node()
