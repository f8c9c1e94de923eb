"""gdino-bag's prompt schedule and output checks, without a model or a bag (the fast part of gdino-bag)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gdino_ros.errors import OutputError
from gdino_ros.tools.bag.errors import BagToolError
from gdino_ros.tools.bag.schedule import PromptPlan, ScheduleEntry, load_schedule
from gdino_ros.tools.bag.writer import check_output

START_NS = 1_700_000_000_000_000_000


def _schedule(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    return path


def test_schedule_entries_in_seconds_or_log_time_with_default_mode(tmp_path: Path) -> None:
    path = _schedule(tmp_path, f"- at: 2.5\n  prompt: cup\n- at_ns: {START_NS + 9}\n  prompt: the mug\n"
                               "  mode: expression\n")
    first, second = load_schedule(path, "phrases")
    assert first == ScheduleEntry("cup", "phrases", at_s=2.5)
    assert second == ScheduleEntry("the mug", "expression", at_ns=START_NS + 9)
    assert first.log_time(START_NS) == START_NS + 2_500_000_000
    assert second.log_time(0) == START_NS + 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "must be a non-empty YAML list"),
        ("- at: 0\n  at_ns: 5\n  prompt: cup\n", "exactly one of at"),
        ("- at: 0\n  prompt: '  '\n", "prompt must be a non-empty string"),
        ("- at: 0\n  prompt: cup\n  mode: words\n", "mode must be one of auto, phrases, expression"),
        ("- at: -1\n  prompt: cup\n", "time -1 is negative"),
        ("- at_ns: 1.5\n  prompt: cup\n", "at_ns an integer"),
        ("- at: 0\n  prompt: cup\n  colour: red\n", "expected keys at (or at_ns), prompt"),
    ],
)
def test_bad_schedule_entries_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BagToolError, match="entry 1|non-empty YAML list") as error:
        load_schedule(_schedule(tmp_path, text), "auto")
    assert message in str(error.value)


def test_plan_starts_with_the_prompt_flag_and_switches_at_each_entry() -> None:
    entries = [ScheduleEntry("b", "expression", at_s=2.0), ScheduleEntry("a", "phrases", at_s=1.0)]
    plan = PromptPlan(("start", "auto"), entries, START_NS)
    times = [START_NS, START_NS + 999_999_999, START_NS + 1_000_000_000, START_NS + 5_000_000_000]
    assert [plan.at(t) for t in times] == [("start", "auto"), ("start", "auto"), ("a", "phrases"),
                                           ("b", "expression")]


def test_plan_without_a_prompt_flag_needs_an_entry_at_the_bag_start() -> None:
    assert PromptPlan(None, [ScheduleEntry("a", "auto", at_s=0.0)], START_NS).at(START_NS) == ("a", "auto")
    with pytest.raises(BagToolError, match="first entry is at 0"):
        PromptPlan(None, [ScheduleEntry("a", "auto", at_s=0.5)], START_NS)


def _own_output(path: Path, files: tuple[str, ...] = ("out_0.mcap",)) -> Path:
    """A folder laid out like an earlier gdino-bag output: metadata.yaml with the marker, the listed files."""
    path.mkdir()
    listed = "".join(f"\n    - {name}" for name in files)
    (path / "metadata.yaml").write_text(
        "rosbag2_bagfile_information:\n  version: 8\n  custom_data:\n    gdino_bag: '1'\n"
        f"  relative_file_paths:{listed}\n"
    )
    for name in files:
        (path / name).write_bytes(b"old")
    return path


def test_output_checks_refuse_to_clobber(tmp_path: Path) -> None:
    bag = tmp_path / "in"
    bag.mkdir()
    with pytest.raises(OutputError, match="inside"):
        check_output(bag / "out", bag, overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "missing" / "out", bag, overwrite=False)
    old = _own_output(tmp_path / "old")
    with pytest.raises(OutputError, match="pass --overwrite"):
        check_output(old, bag, overwrite=False)
    check_output(old, bag, overwrite=True)  # an earlier gdino-bag output may be replaced
    (old / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="does not list"):
        check_output(old, bag, overwrite=True)
    check_output(tmp_path / "new", bag, overwrite=False)


def test_overwrite_never_replaces_the_input_or_a_stranger(tmp_path: Path) -> None:
    """#13 items 1 and 2: an output holding the input, a regular file, or a bag another tool wrote."""
    recordings = tmp_path / "rec"
    recordings.mkdir()
    recording = recordings / "run1.mcap"
    recording.write_bytes(b"recorded")
    with pytest.raises(OutputError, match="holds the input"):
        check_output(recordings, recording, overwrite=True)
    with pytest.raises(OutputError, match="holds the input"):
        check_output(tmp_path, recordings, overwrite=True)
    with pytest.raises(OutputError, match="is \\(inside\\) the input"):
        check_output(recording, recording, overwrite=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(OutputError, match="not a folder"):
        check_output(notes, recording, overwrite=True)
    foreign = tmp_path / "recorded_by_ros2_bag"
    foreign.mkdir()
    (foreign / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: 9\n")
    with pytest.raises(OutputError, match="not marked as gdino-bag"):
        check_output(foreign, recording, overwrite=True)
    (foreign / "metadata.yaml").write_text("old")
    with pytest.raises(OutputError, match="no readable rosbag2 metadata"):
        check_output(foreign, recording, overwrite=True)
    assert recording.read_bytes() == b"recorded" and notes.read_text() == "keep me"
