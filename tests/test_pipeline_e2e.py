"""The whole chain at tiny size: `dvc repro` in a scratch project, then serve the result.

The data is a `folder` source holding good clips and three bad ones (corrupt bytes, a clip
without audio, an empty file): they must be rejected with reasons while the rest runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from jointdit.data.media import display_scale, probe
from jointdit.metrics.fidelity import psnr
from jointdit.metrics.vggish import VGGish
from tests.tiny_project import TINY_CLIP, make_folder, run, tiny_params

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("jointdit", "tasks", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    make_folder(root / "incoming")
    # Random VGGish weights: the FAD path runs for real (its numbers mean nothing here).
    torch.manual_seed(0)
    save_file(VGGish().state_dict(), str(root / "vggish.safetensors"))
    params = tiny_params()
    params["evaluate"]["embedders"]["vggish"] = "vggish.safetensors"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], root)
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


def test_bad_inputs_are_rejected_with_reasons_and_the_rest_runs(project):
    rejected = pd.read_csv(project / "data/validated/rejected.csv")
    rejected = dict(zip(rejected["path"], rejected["code"], strict=True))
    assert rejected == {
        "corrupt.mp4": "unreadable",  # not media: refused at fetch, never copied
        "empty.mp4": "empty_file",
        "clips/no_audio.mp4": "no_audio",
    }
    report = json.loads((project / "reports/validation.json").read_text())
    assert report["n_inputs"] == 9 and report["n_accepted"] == 6 and report["n_rejected"] == 3
    assert report["n_rejected_at_fetch"] == 2


def test_every_stage_wrote_its_outputs(project):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert set(metrics["val_loss"]) == {"untrained", "experts", "stage_a", "stage_b"}
    assert metrics["val_loss"]["stage_b"] < metrics["val_loss"]["untrained"]
    systems = metrics["systems"]
    assert set(systems) == {
        "joint-none",
        "joint-cfg",
        "joint-jointcfg",
        "iso-cfg",
        "real",
        "codec",
        "shuffled",
    }
    assert metrics["default_system"] == "joint-jointcfg"
    assert metrics["n_samples"] == 2 and metrics["n_reference"] == 4
    assert metrics["embedders"] == {
        "vggish": True,
        "i3d": False,
        "clip": False,
        "synchformer": False,
    }
    for name, row in systems.items():
        assert 0.0 <= row["av_align"] <= 1.0 and 0.0 <= row["oracle_f1"] <= 1.0
        assert row["n_samples"] == 2
        if name != "shuffled":  # the same sets as `real`
            # one 0.96 s VGGish example per 1 s clip
            assert row["n_logmel"] == 2 and row["n_vggish"] == 2 and np.isfinite(row["fad"])
            assert "fvd" not in row  # no I3D weights: never a made-up FVD
        assert "desync" not in row  # no Synchformer weights: recorded in `embedders` above
        assert 0.0 <= row["av_align_fine"] <= 1.0
        if name.startswith(("joint", "iso")):
            # frame 0 is the image, held clean: exact in every sample
            assert row["ssim"] == 1.0 and row["psnr"] == np.inf
    per_sample = pd.read_csv(project / "reports/per_sample.csv")
    assert len(per_sample) == 7 * 2 and set(per_sample["seed"]) == {1000, 1001}
    assert list(pd.read_csv(project / "reports/plots/systems.csv")["system"]) == list(systems)
    for stage in ("experts", "stage_a", "stage_b"):
        assert (project / "models" / stage / "model.safetensors").is_file()
    samples = sorted(p.name for p in (project / "reports/samples").iterdir())
    assert "00_joint.mp4" in samples and "00_joint.png" in samples
    assert {"sync_best0.png", "sync_worst0.png", "systems.png"} <= set(samples)
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["version"] == 1 and registry["champion"] == 1 and registry["promoted"]


def test_second_repro_reruns_nothing_and_metrics_show(project):
    out = run([sys.executable, "-m", "dvc", "repro"], project).stdout
    assert "Running stage" not in out
    shown = run([sys.executable, "-m", "dvc", "metrics", "show"], project).stdout
    assert "reports/metrics.json" in shown and "stage_b" in shown


def test_summary_after_repro_is_a_narrow_table_of_every_system(project):
    out = run([sys.executable, "-m", "tasks.summary"], project).stdout
    metrics = json.loads((project / "reports/metrics.json").read_text())
    table = [line for line in out.splitlines() if line.startswith("  ") and "/" not in line]
    assert [line.split()[0] for line in table] == ["system", *metrics["systems"]]
    assert "joint-jointcfg *" in out and max(len(line) for line in table) <= 100
    assert "reports/samples/systems.png" in out and "registry" in out.lower()


def test_registered_champion_loads_in_a_fresh_process(project):
    script = (
        "import mlflow, json;"
        "mlflow.set_tracking_uri('sqlite:///mlflow.db');"
        "m = mlflow.pyfunc.load_model('models:/jointdit@champion');"
        "print(json.dumps(sorted(m.metadata.get_model_info().flavors)))"
    )
    out = run([sys.executable, "-c", script], project).stdout
    assert "python_function" in out


def drawn_scene(width: int, height: int) -> np.ndarray:
    """A frame no data set holds: a yellow and a blue square over a grey floor, a red stripe."""
    canvas = np.full((height, width, 3), (20, 20, 30), dtype=np.uint8)
    canvas[height * 3 // 4 :] = 128
    q = min(width, height) // 4
    canvas[2 : 2 + q, 2 : 2 + q] = (230, 200, 40)
    canvas[2 : 2 + q, width - 2 - q : width - 2] = (40, 80, 230)
    canvas[2 * q : 2 * q + 2] = (200, 40, 40)
    return canvas


def test_sample_flow_writes_a_sounding_video_that_starts_on_the_image(
    project, prefect_harness, monkeypatch
):
    from flows.sample import sample

    monkeypatch.chdir(project)
    image = project / "drawn.png"
    drawn = drawn_scene(TINY_CLIP["width"], TINY_CLIP["height"])
    Image.fromarray(drawn).save(image)
    paths = sample(
        image=str(image),
        prompt="a red ball bouncing",
        seed=3,
        steps=2,
        tracking_uri="sqlite:///mlflow.db",
        out_dir=str(project / "outputs"),
    )
    info = probe(Path(paths["video"]))
    scale = display_scale(TINY_CLIP["height"], TINY_CLIP["width"])
    assert scale == 8 and info.has_audio and info.fps == TINY_CLIP["fps"]
    assert (info.width, info.height) == (TINY_CLIP["width"] * scale, TINY_CLIP["height"] * scale)
    assert abs(info.duration_s - TINY_CLIP["duration_s"]) < 0.1
    assert Path(paths["audio"]).stat().st_size > 16000  # 1 s of 16-bit PCM
    assert Path(paths["preview"]).stat().st_size > 0
    # frame 0 of the playable file is the drawn image (each pixel a scale x scale block)
    with av.open(paths["video"]) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.float64)
    h, w = TINY_CLIP["height"], TINY_CLIP["width"]
    first = first.reshape(h, scale, w, scale, 3).mean(axis=(1, 3))
    assert psnr(first, drawn) >= 30.0


def test_pipeline_flow_runs_the_dvc_stages_and_the_gate_holds(
    project, prefect_harness, monkeypatch
):
    from flows.pipeline import pipeline

    monkeypatch.chdir(project)
    metrics = pipeline()  # every stage up to date: DVC no-ops, run as Prefect tasks
    assert metrics == json.loads((project / "reports/metrics.json").read_text())
    # registering the same model again: a new candidate that does not beat the champion
    pipeline(stages=["register"], force=True)
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["version"] == 2 and registry["candidate"] == 2
    assert registry["champion"] == 1 and not registry["promoted"]
    assert "does not beat" in registry["reason"] and "oracle_f1 must beat" in registry["rule"]


def test_pipeline_flow_rejects_unknown_stages(prefect_harness):
    from flows.pipeline import pipeline

    with pytest.raises(ValueError, match="unknown stages"):
        pipeline(stages=["trian"])


def test_raw_clips_and_cache_round_trip_through_a_dvc_remote(project, tmp_path):
    def hashes() -> dict[str, str]:
        files = [p for d in ("data/raw", "data/cache") for p in (project / d).rglob("*")]
        return {
            str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files
            if p.is_file()
        }

    before = hashes()
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path)], project)
    run([sys.executable, "-m", "dvc", "push"], project)
    for gone in ("data/raw", "data/cache", ".dvc/cache"):
        shutil.rmtree(project / gone)
    run([sys.executable, "-m", "dvc", "pull", "fetch", "cache"], project)
    assert hashes() == before and any(k.endswith(".safetensors") for k in before)
    status = run([sys.executable, "-m", "dvc", "status", "fetch", "cache"], project).stdout
    assert "up to date" in status
