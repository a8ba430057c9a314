"""The fine-tune as a user runs it, at tiny size: the default `dvc repro` registers a champion,
`dvc repro finetune/dvc.yaml` adapts it on other data (coloured backgrounds), compares it with
its parent, registers it through the gate with the parent recorded, and the registered
fine-tune serves through the pyfunc and the `sample` flow. A bare `dvc repro` never fine-tunes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from jointdit.checkpoint import load_checkpoint
from jointdit.config import from_dict
from jointdit.data.media import display_scale, probe
from tasks.register import GateConfig, gate
from tests.tiny_project import REPO, TINY_CLIP, run, tiny_params


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """The scratch project after the default `dvc repro` and `dvc repro finetune/dvc.yaml`,
    with both commands' output."""
    root = tmp_path_factory.mktemp("finetune")
    for name in ("jointdit", "tasks", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    (root / "finetune").mkdir()
    shutil.copy(REPO / "finetune" / "dvc.yaml", root / "finetune")
    params = tiny_params()
    params["data"] = {"source": "synthetic", "synthetic": dict(params["data"]["synthetic"])}
    params["data"]["synthetic"].update(num_clips=8, duration_s=1.0, fps=4.0, width=16, height=16)
    params["validate"]["split_seed"] = 0
    params["finetune"].update(steps=3, batch_size=2, warmup_steps=1, eval_every=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], root)
    # the whole default graph, then the fine-tune: on a shared 2-core machine under load the
    # first took 15 minutes, the 900 s that one `run` is given
    default = run([sys.executable, "-m", "dvc", "repro"], root, timeout=2400).stdout
    # the user's new domain: the same clip names, other pictures
    params["data"]["synthetic"]["background_variety"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    finetuned = run(
        [sys.executable, "-m", "dvc", "repro", "finetune/dvc.yaml"], root, timeout=2400
    ).stdout
    return SimpleNamespace(root=root, default=default, finetune=finetuned)


@pytest.fixture(scope="module")
def project(runs) -> Path:
    return runs.root


def test_a_bare_dvc_repro_never_fine_tunes_and_the_fine_tune_reruns_only_what_is_stale(runs):
    assert "Running stage 'register'" in runs.default and "finetune" not in runs.default
    # the new data: fetch, validate and cache rerun; no training stage of the default graph
    ran = {line.split("'")[1] for line in runs.finetune.splitlines() if "Running stage" in line}
    assert ran == {"fetch", "validate", "cache", "finetune/dvc.yaml:finetune"}


def test_the_fine_tune_starts_from_the_champion_and_is_registered_with_its_parent(project):
    registry = json.loads((project / "reports/finetune/registry.json").read_text())
    assert registry["version"] == 2
    assert registry["tags"]["parent_model_uri"] == "models:/jointdit@champion"
    assert registry["tags"]["parent_version"] == "1"
    assert registry["tags"]["finetune_method"] == "lora"
    metrics = json.loads((project / "reports/finetune/metrics.json").read_text())
    assert metrics["parent"] == {"model_uri": "models:/jointdit@champion", "version": "1"}
    assert metrics["default_system"] == "finetune-jointcfg"
    assert set(metrics["systems"]) == {"finetune-jointcfg", "parent-jointcfg", "real"}
    assert set(metrics["val_loss"]) == {"finetune", "parent"}
    # the gate judged the champion (the parent) on its row measured here, on the new data,
    # not on the numbers it was registered with
    rule = from_dict(
        GateConfig, yaml.safe_load((project / "params.yaml").read_text())["register"]["gate"]
    )
    row = metrics["systems"]["parent-jointcfg"]
    expected = gate(registry["metrics"], row, rule, (metrics["protocol"],) * 2)
    assert (registry["promoted"], registry["reason"]) == expected
    assert metrics["trainable_parameters"] < metrics["frozen_parameters"] / 10

    script = (
        "import mlflow, json;"
        "mlflow.set_tracking_uri('sqlite:///mlflow.db');"
        "c = mlflow.MlflowClient();"
        "v = c.get_model_version('jointdit', '2');"
        "run = c.get_run(v.tags['finetune_run_id']);"
        "print(json.dumps({'tags': v.tags, 'run': run.data.tags,"
        " 'artifacts': [a.path for a in c.list_artifacts(run.info.run_id, 'adapter')]}))"
    )
    info = json.loads(run([sys.executable, "-c", script], project).stdout.splitlines()[-1])
    assert info["tags"]["parent_version"] == "1" and info["tags"]["protocol"] == metrics["protocol"]
    assert info["run"]["parent_model_uri"] == "models:/jointdit@champion"
    assert info["run"]["parent_version"] == "1"
    assert sorted(info["artifacts"]) == [
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
    ]  # fmt: skip


def test_the_registered_model_is_the_parent_plus_its_merged_adapters(project):
    merged, meta = load_checkpoint(project / "models/finetune")
    parent, _ = load_checkpoint(project / "models/stage_b")  # what version 1 registered
    assert meta["parent_version"] == "1" and meta["method"] == "lora"
    adapters = load_file(str(project / "models/finetune/adapter/adapter_model.safetensors"))
    config = json.loads((project / "models/finetune/adapter/adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    adapted = {k.removesuffix(".lora_A.weight") for k in adapters if k.endswith("lora_A.weight")}
    assert adapted == set(config["target_modules"])
    merged_state, parent_state = merged.state_dict(), parent.state_dict()
    for name in parent_state:
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and layer in adapted:
            delta = adapters[f"{layer}.lora_B.weight"] @ adapters[f"{layer}.lora_A.weight"]
            expected = parent_state[name] + scale * delta
            torch.testing.assert_close(merged_state[name], expected, rtol=1e-6, atol=1e-6)
        else:  # everything else is the parent's, bit for bit
            assert torch.equal(merged_state[name], parent_state[name]), name


def test_the_registered_fine_tune_serves_through_the_pyfunc(project):
    script = (
        "import mlflow, json, torch;"
        "from jointdit.checkpoint import load_checkpoint;"
        "from pathlib import Path;"
        "mlflow.set_tracking_uri('sqlite:///mlflow.db');"
        "m = mlflow.pyfunc.load_model('models:/jointdit/2');"
        "served = m.unwrap_python_model().model.state_dict();"
        "saved = load_checkpoint(Path('models/finetune'))[0].state_dict();"
        "print(json.dumps(all(torch.equal(served[k], saved[k]) for k in saved)))"
    )
    assert run([sys.executable, "-c", script], project).stdout.splitlines()[-1] == "true"


def test_the_registered_fine_tune_serves_through_the_sample_flow(
    project, prefect_harness, monkeypatch
):
    from flows.sample import sample

    monkeypatch.chdir(project)
    image = project / "drawn.png"
    canvas = np.full((40, 40, 3), (30, 60, 90), dtype=np.uint8)  # a coloured background
    canvas[5:13, 16:24] = (230, 40, 40)
    Image.fromarray(canvas).save(image)
    paths = sample(
        image=str(image),
        seed=1,
        steps=2,
        model_uri="models:/jointdit/2",
        tracking_uri="sqlite:///mlflow.db",
        out_dir=str(project / "outputs"),
    )
    info = probe(Path(paths["video"]))
    assert info.has_audio and info.fps == TINY_CLIP["fps"]
    scale = display_scale(TINY_CLIP["height"], TINY_CLIP["width"])
    assert (info.width, info.height) == (TINY_CLIP["width"] * scale, TINY_CLIP["height"] * scale)
