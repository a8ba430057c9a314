"""The whole chain on the pretrained path (`profiles/gpu.yaml`), at tiny size on the CPU.

Tiny random models of the real classes stand in for the pretrained weights, in the snapshot
layouts the profile documents: SVD {vae/, unet/}, AudioLDM {vae/, vocoder/, unet/, scheduler/}
and an open_clip snapshot. The scratch project's params are params.yaml overlaid with the gpu
profile (as `jointdit profile gpu` runs it), then made small; `dvc repro` runs every stage and
the registered model is served through mlflow.pyfunc.

What the CPU cannot take from the profile is overridden, each named below: float32 weights
(float16 convolutions, and bfloat16 UNets whose weights the test compares bit for bit), no
bf16 autocast, cpu devices, one training process.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel
from PIL import Image
from safetensors.torch import load_file

from jointdit.data.shards import load_split
from tasks.common import load_params
from tasks.profiles import load_profile, overlay
from tests.pretrained_fixtures import (
    AUDIOLDM_TINY,
    SCHEDULER,
    SVD_TINY,
    audio_vae,
    save_svd_vae,
    save_vocoder,
    snapshot,
)
from tests.test_pipeline_e2e import make_folder, run

REPO = Path(__file__).resolve().parent.parent
CLIP = {"duration_s": 1.0, "hop_s": 1.0, "fps": 4.0, "width": 16, "height": 16}
TEXT_LEN = 16  # the tiny CLIP's context length (the profile's 77 is ViT-B-16's)
STAGE_A = load_profile("gpu", REPO / "profiles")["stage_a"]["trainable"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_clip) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    svd = snapshot(root / "svd", UNetSpatioTemporalConditionModel, SVD_TINY)
    save_svd_vae(svd / "vae", 0.25)
    audioldm = snapshot(root / "audioldm", UNet2DConditionModel, AUDIOLDM_TINY, 1, SCHEDULER)
    audio_vae(0.5).save_pretrained(audioldm / "vae")
    save_vocoder(audioldm / "vocoder")
    return {"svd": svd, "audioldm": audioldm, "clip": tiny_clip[1] / "snapshot"}


def tiny_gpu_params(weights: dict[str, Path]) -> dict:
    params = overlay(load_params(REPO / "params.yaml"), load_profile("gpu", REPO / "profiles"))
    params["torch_threads"] = 1
    params["data"]["folder"] = "incoming"
    # split_seed 1 puts 2 of the 6 good clips in val (as in test_pipeline_e2e)
    params["validate"].update(
        min_duration_s=0.5, min_width=8, min_height=8, val_fraction=0.34, split_seed=1
    )
    params["clip"].update(CLIP)
    cpu32 = {"dtype": "float32", "device": "cpu"}  # CPU: no float16 convolutions
    params["codec"]["svd"].update(path=str(weights["svd"]), encode_chunk=4, decode_chunk=2, **cpu32)
    params["codec"]["audioldm2"].update(path=str(weights["audioldm"]), **cpu32)
    params["conditioning"].update(clip_pretrained=str(weights["clip"]), device="cpu")
    params["model"]["text_len"] = TEXT_LEN
    backbones = params["model"]["backbones"]
    # float32 UNets: the experts' weights are compared with the snapshots' exactly
    backbones.update(dtype="float32", joint_head_dim=16, context_dim=32)
    backbones["svd"]["path"] = str(weights["svd"])
    backbones["audioldm"]["path"] = str(weights["audioldm"])
    for stage in ("stage_a", "stage_b"):
        params[stage].update(
            steps=2, batch_size=2, warmup_steps=1, eval_every=2, checkpoint_every=2, bf16=False
        )
    params["train_launch"]["nproc_per_node"] = 1
    params["sample"]["steps"] = 2
    params["evaluate"].update(num_samples=2, num_reference=4, num_media=1, num_sheets=1)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, weights) -> Path:
    root = tmp_path_factory.mktemp("gpu_project")
    for name in ("jointdit", "tasks", "flows", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    make_folder(root / "incoming")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_gpu_params(weights)))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], root)
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


def test_the_profile_is_what_the_project_ran(project, weights):
    ran = load_params(project / "params.yaml")
    assert ran["codec"]["video"] == "svd" and ran["codec"]["audio"] == "audioldm2"
    assert ran["conditioning"]["encoder"] == "clip" and ran["model"]["kind"] == "backbones"
    assert ran["experts"]["steps"] == 0 and ran["stage_a"]["trainable"] == STAGE_A


def test_cache_holds_pretrained_latents_and_clip_features(project):
    index = json.loads((project / "data/cache/index.json").read_text())
    assert index["codec"] == "svd+audioldm2" and index["conditioning"] == "clip"
    train = load_split(project / "data/cache", "train").batch
    n = len(train.video)
    assert n == 4  # 4 good clips in train, one 1 s window each
    # 4 frames of 16x16 -> SVD VAE latents (4, 8, 8); 1 s of 16 kHz -> 100 mel frames of 64
    # bins -> AudioLDM VAE latents (8, 16, 25)
    assert train.video.shape == (n, 4, 4, 8, 8) and train.image.shape == (n, 4, 8, 8)
    assert train.audio.shape == (n, 8, 16, 25)
    assert train.text.shape == (n, TEXT_LEN, 32) and train.text.dtype == torch.float32
    assert train.image_embedding.shape == (n, 16)
    # CLIP's embeddings are L2-normalised; the captions' features end at their end token
    torch.testing.assert_close(train.image_embedding.norm(dim=-1), torch.ones(n))
    assert (train.text.abs().sum(-1) > 0).any(-1).all() and (train.text[:, -1] == 0).all()


def unet_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "unet" / "diffusion_pytorch_model.safetensors"))


def checkpoint(project: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(project / "models" / stage / "model.safetensors"))


def test_the_experts_are_the_pretrained_unets(project, weights):
    config = json.loads((project / "models/experts/config.json").read_text())
    assert config["kind"] == "backbones"
    experts = checkpoint(project, "experts")
    for side, name in (("video", "svd"), ("audio", "audioldm")):
        unet = unet_weights(weights[name])
        assert {k for k in experts if k.startswith(f"{side}.unet.")} == {
            f"{side}.unet.{k}" for k in unet
        }
        for key, value in unet.items():
            torch.testing.assert_close(experts[f"{side}.unet.{key}"], value, rtol=0, atol=0)
    report = json.loads((project / "reports/experts.json").read_text())
    assert report["steps"] == 0


def test_stage_a_moves_only_the_joint_and_context_layers(project):
    experts, stage_a = checkpoint(project, "experts"), checkpoint(project, "stage_a")
    assert set(experts) == set(stage_a)
    trainable = {k for k in stage_a if any(fnmatch.fnmatch(k, p) for p in STAGE_A)}
    moved = {k for k in stage_a if not torch.equal(stage_a[k], experts[k])}
    assert moved and moved <= trainable
    assert any(k.startswith("joint.") for k in moved)
    assert not any(k.startswith(("video.unet.", "audio.unet.")) for k in moved)


def test_evaluate_and_register_ran_on_the_joint_model(project):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["default_system"] == "joint-jointcfg"
    assert set(metrics["val_loss"]) == {"untrained", "experts", "stage_a", "stage_b"}
    assert all(np.isfinite(v) for v in metrics["val_loss"].values())
    row = metrics["systems"]["joint-jointcfg"]
    assert row["n_samples"] == 2 and 0.0 <= row["av_align"] <= 1.0
    assert np.isfinite(row["fd_logmel"]) and np.isfinite(row["fd_frames"])
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["version"] == 1 and registry["candidate"] == 1


def test_the_registered_model_serves_an_image_and_a_prompt(project, monkeypatch):
    import mlflow
    import pandas as pd

    monkeypatch.chdir(project)
    image = project / "drawn.png"
    canvas = np.zeros((40, 40, 3), dtype=np.uint8)
    canvas[5:13, 16:24] = (230, 40, 40)
    Image.fromarray(canvas).save(image)
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    served = mlflow.pyfunc.load_model("models:/jointdit@candidate")
    rows = pd.DataFrame([{"image": str(image), "prompt": "a red ball bouncing", "seed": 3}])
    out = served.predict(rows)[0]
    assert out["audio_decoder"] == "hifigan"
    assert out["frames"].shape == (4, 16, 16, 3) and out["frames"].dtype == np.uint8
    # 25 latent frames -> 100 mel frames -> 160 samples each
    assert out["audio"].shape == (16000,) and out["audio"].dtype == np.float32
    assert np.isfinite(out["audio"]).all()
    assert out["fps"] == 4.0 and out["sample_rate"] == 16000
