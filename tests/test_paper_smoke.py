"""The reproduction script end to end on tiny settings, so that it cannot rot.

It reads a slice of the real Fashion-MNIST (1,000 training and 500 test images,
the first of Debian's files, written back as IDX): the pipeline is the full
run's, and the 10,000-image test split, evaluated by every job, would be most of
its time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ktg.data.mnist import fashionmnist
from tests.idx_files import write_split

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper" / "reproduce.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SLICE = {"train": 1000, "test": 500}


def fashion_slice(folder: Path) -> Path:
    """The first images of each of Debian's Fashion-MNIST splits, as the four IDX files in ``folder``."""
    full = fashionmnist(FASHION, None)
    for split, (images, labels) in {"train": (full.train_x, full.train_y), "test": (full.test_x, full.test_y)}.items():
        n = SLICE[split]
        write_split(folder, split, images[:n, 0].numpy().astype(np.uint8), labels[:n].numpy())
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_reproduce_smoke_writes_the_page(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "results.md"
    env = {**os.environ, "KTG_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "runs"), "--doc", str(doc),
               "--data-dir", str(fashion_slice(tmp_path / "fashion"))]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    page = doc.read_text()
    for heading in ("Table 2 analog", "Table 3 analog", "early stop", "Conclusion", "commands this run executed",
                    "At full scale"):
        assert heading in page
    assert "Smoke run" in page
    report = json.loads((tmp_path / "runs" / "compare" / "compare.json").read_text())
    names = [g["name"] for g in report["graphs"]]
    assert names == ["independent", "kd", "dml-2", "searched-2n", "searched-3n", "digits-2n", "digits-2n-through"]
    assert len(report["jobs"]) == 7 * 2  # every graph, every seed
    through = json.loads((tmp_path / "runs" / "graphs" / "digits-2n-through.json").read_text())
    assert {e["gate"] for e in through["edges"]} == {"through"}
    for figure in ("compare.png", "search-curves.png"):
        assert (doc.parent / "results" / figure).stat().st_size > 1000
    # Run again: every step is re-used, nothing is trained twice.
    jobs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "compare" / "jobs").rglob("*.json")}
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "compare" / "jobs").rglob("*.json")} == jobs
