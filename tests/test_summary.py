"""`python -m tasks.summary`, the end of `make repro`: a table a terminal shows whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.summary import summary

REPO = Path(__file__).resolve().parent.parent


def reports(root: Path) -> Path:
    reports = root / "reports"
    (reports / "plots").mkdir(parents=True)
    (reports / "samples").mkdir()
    systems = {
        "real": {"av_align": 0.424, "av_align_sem": 0.032, "fd_logmel": 6.7, "n_samples": 12.0},
        "joint-jointcfg": {"av_align": 0.256, "av_align_sem": 0.025, "fd_logmel": 26.9,
                           "psnr": float("inf"), "n_samples": 12.0},
        "iso-cfg": {"av_align": 0.312, "av_align_sem": 0.026, "fd_logmel": 41.8,
                    "psnr": 13.7, "n_samples": 12.0},
    }  # fmt: skip
    metrics = {"n_samples": 12, "n_reference": 24, "default_system": "joint-jointcfg",
               "val_loss": {"untrained": 2.5, "stage_b": 1.25}, "systems": systems}  # fmt: skip
    (reports / "metrics.json").write_text(json.dumps(metrics))
    # evaluate's plot table: its headline columns, `fvd` among them though no system has it
    (reports / "plots" / "systems.csv").write_text(
        "system,av_align,fd_logmel,fvd,psnr\n"
        "real,0.424,6.7,,\njoint-jointcfg,0.256,26.9,,inf\niso-cfg,0.312,41.8,,13.7\n"
    )
    (reports / "samples" / "systems.png").write_bytes(b"png")
    registry = {"model_name": "jointdit", "version": 3, "champion": 1, "promoted": False,
                "reason": "av_align 0.2560 does not beat the champion's 0.2810 by more than 0"}
    (reports / "registry.json").write_text(json.dumps(registry))
    return reports


def test_summary_shows_the_headline_columns_with_their_errors(tmp_path):
    r = reports(tmp_path)
    text = summary(r, r / "plots")
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("  ") and "/" not in line]
    assert len(table) == 4 and max(len(line) for line in table) <= 100
    header = next(line for line in lines if line.strip().startswith("system"))
    assert header.split() == ["system", "av_align", "fd_logmel", "psnr"]  # no empty column
    rows = {line.split()[0]: line for line in lines if line.startswith("  ") and "." in line}
    assert rows["joint-jointcfg"].split()[1:] == ["*", "0.256", "±", "0.025", "26.9", "inf"]
    assert rows["real"].split()[1:] == ["0.424", "±", "0.032", "6.700", "-"]
    assert "Validation loss: untrained 2.500, stage_b 1.250" in text
    assert "jointdit version 3 not promoted (champion: version 1): av_align 0.2560" in text
    assert f"{r / 'samples' / 'systems.png'}: every system's headline metrics" in text


def test_no_evaluation_yet_is_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.json: no evaluation yet"):
        summary(tmp_path, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "tasks.summary"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "run `dvc repro` first" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_metrics_file_without_the_plot_table_still_summarises(tmp_path):
    """A metrics.json written by hand (or by an older evaluate): every column but the errors."""
    reports = tmp_path / "reports"
    reports.mkdir()
    row = {"oracle_f1": 0.5, "oracle_f1_sem": 0.1, "fd_frames": 1.0}
    metrics = {"default_system": "joint-jointcfg", "systems": {"joint-jointcfg": row}}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    out = summary(reports, tmp_path / "plots")
    header, line = [x for x in out.splitlines() if x.startswith("  ")][:2]
    assert header.split() == ["system", "oracle_f1", "fd_frames"]
    assert line.split() == ["joint-jointcfg", "*", "0.500", "±", "0.100", "1.000"]
