"""End-to-end smoke test of ``ltc-control demo`` on a tiny budget: every stage writes real, readable files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import torch

from ltc_control.agents.demo import demo_main
from ltc_control.checkpoint import load_checkpoint


def test_demo_writes_checkpoint_video_and_report(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "runs"
    code = demo_main(
        [
            "--no-progress",
            "--out_dir", str(out),
            "--workers", "0",
            "--set", "env.kwargs={image_height: 16, image_width: 32, road_length: 40}",
            "--set", "policy.image_shape=[16, 32, 3]",
            "--set", "demos.num_roads=3",
            "--set", "bc.epochs=1",
            "--set", "bc.max_batches_per_epoch=3",
            "--set", "eval.num_roads=1",
            "--video-steps", "12",
            "--inspect-steps", "12",
            "--saliency-frames", "4",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert str(run) in printed

    policy, _ = load_checkpoint(run / "checkpoints" / "best")
    assert policy.controller.cell.num_neurons == 19  # the NCP-LTC lane-keeping preset

    cap = cv2.VideoCapture(str(run / "rollout.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame is not None and frame.size > 0
    assert 2 <= frames <= 12  # one frame per control step, at most --video-steps

    html = (run / "inspection" / "index.html").read_text()
    assert html.count("<img") >= 5
    summary = json.loads((run / "inspection" / "summary.json").read_text())["summary"]
    assert summary["steps recorded"] >= 2
    assert 0.0 < summary["PC1 share of hidden variance"] <= 1.0
    assert "tau range (time units)" in summary  # the LTC's liquid time constants were recorded
