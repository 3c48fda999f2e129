"""Smoke test of experiments/bench/env_speed.py with a tiny budget (no CarRacing, no vector workers)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "env_speed.py"


def test_env_speed_script_writes_a_report(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("env_speed_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "env_speed.md"
    rc = module.main(["--steps", "5", "--repeats", "1", "--no-vector", "--no-carracing", "--write", str(out)])
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| LTC/LaneKeeping-v0 \| (\d+x\d+) \| (\d+) \| (\d+) \| - \| ([\d.]+) \|$", text, re.M
    )
    assert [r[0] for r in rows] == ["64x64", "96x96", "64x128"]
    assert all(int(r[1]) > 0 and int(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert not (tmp_path / "env_speed.md.tmp").exists()
