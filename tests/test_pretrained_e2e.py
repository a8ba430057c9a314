"""The whole chain on the pretrained path (`profiles/gpu.yaml`), at tiny size on the CPU.

Tiny random models of the real classes stand in for the pretrained weights, in the snapshot
layouts the profile documents: SVD {vae/, unet/}, AudioLDM {vae/, vocoder/, unet/, scheduler/}
and an open_clip snapshot. The scratch project's params are params.yaml overlaid with the gpu
profile (as `jointdit profile gpu` runs it), then made small; `dvc repro` runs every stage and
the registered model is served through mlflow.pyfunc.

The profile's precision stays as it is (float16 codecs, bfloat16 UNets, bf16 autocast): it
runs on the CPU too. What is overridden: sizes, steps, paths, cpu devices, one process.
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
from tasks.params import load_params
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
from tests.tiny_project import make_folder, run

REPO = Path(__file__).resolve().parent.parent
CLIP = {"duration_s": 1.0, "hop_s": 1.0, "fps": 4.0, "width": 16, "height": 16}
TEXT_LEN = 16  # the tiny CLIP's context length (the profile's 77 is ViT-B-16's)
PROFILE = load_profile("gpu", REPO / "profiles")


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
    params["codec"]["svd"].update(
        path=str(weights["svd"]), encode_chunk=4, decode_chunk=2, device="cpu"
    )
    params["codec"]["audioldm2"].update(path=str(weights["audioldm"]), device="cpu")
    params["conditioning"].update(clip_pretrained=str(weights["clip"]), device="cpu")
    params["model"]["text_len"] = TEXT_LEN
    backbones = params["model"]["backbones"]
    backbones.update(joint_head_dim=16, context_dim=32)
    backbones["svd"]["path"] = str(weights["svd"])
    backbones["audioldm"]["path"] = str(weights["audioldm"])
    short = dict(steps=2, batch_size=2, warmup_steps=1, eval_every=2, checkpoint_every=2)
    for stage in ("stage_a", "stage_b"):
        params[stage].update(short)
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
    assert ran["experts"]["steps"] == 0 and ran["stage_a"]["grad_checkpointing"]
    assert ran["codec"]["svd"]["dtype"] == ran["codec"]["audioldm2"]["dtype"] == "float16"
    assert ran["model"]["backbones"]["dtype"] == "bfloat16" and ran["stage_b"]["bf16"]
    for stage in ("stage_a", "stage_b"):
        assert ran[stage]["trainable"] == PROFILE[stage]["trainable"]


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
        for key, value in unet.items():  # the profile's bfloat16 UNets: the weights rounded
            torch.testing.assert_close(
                experts[f"{side}.unet.{key}"], value.to(torch.bfloat16), rtol=0, atol=0
            )
    assert all(v.dtype == torch.float32 for k, v in experts.items() if k.startswith("joint."))
    report = json.loads((project / "reports/experts.json").read_text())
    assert report["steps"] == 0


def moved_and_trainable(project: Path, stage: str, parent: str) -> tuple[set[str], set[str]]:
    """The parameters `stage` changed from its parent's checkpoint, and those it may train."""
    before, after = checkpoint(project, parent), checkpoint(project, stage)
    assert set(before) == set(after)
    patterns = PROFILE[stage]["trainable"]
    trainable = {k for k in after if any(fnmatch.fnmatch(k, p) for p in patterns)}
    return {k for k in after if not torch.equal(after[k], before[k])}, trainable


def test_stage_a_moves_only_the_joint_and_context_layers(project):
    moved, trainable = moved_and_trainable(project, "stage_a", "experts")
    assert moved and moved <= trainable
    assert any(k.startswith("joint.") for k in moved)
    assert not any(k.startswith(("video.unet.", "audio.unet.")) for k in moved)


def test_stage_b_also_moves_the_unets_outer_layers_only(project):
    moved, trainable = moved_and_trainable(project, "stage_b", "stage_a")
    assert moved and moved <= trainable
    unets = {k for k in moved if k.startswith(("video.unet.", "audio.unet."))}
    assert "video.unet.conv_in.weight" in unets and "audio.unet.conv_out.weight" in unets
    assert all(k.split(".")[2] in ("conv_in", "conv_out") for k in unets)


def test_evaluate_and_register_ran_on_the_joint_model(project):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["default_system"] == "joint-jointcfg"
    assert set(metrics["val_loss"]) == {"untrained", "experts", "stage_a", "stage_b"}
    assert all(np.isfinite(v) for v in metrics["val_loss"].values())
    row = metrics["systems"]["joint-jointcfg"]
    assert row["n_samples"] == 2 and 0.0 <= row["av_align"] <= 1.0
    assert np.isfinite(row["fd_logmel"]) and np.isfinite(row["fd_frames"])
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["version"] == 1 and registry["candidate"] == 1 and registry["champion"] == 1


def test_the_registered_model_serves_an_image_and_a_prompt(
    project, monkeypatch, restore_tracking_uri
):
    import mlflow
    import pandas as pd

    monkeypatch.chdir(project)
    image = project / "drawn.png"
    canvas = np.zeros((40, 40, 3), dtype=np.uint8)
    canvas[5:13, 16:24] = (230, 40, 40)
    Image.fromarray(canvas).save(image)
    # absolute: MLflow keeps one store per URI string, and another test's project may have
    # opened a relative "sqlite:///mlflow.db" in this process already
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/jointdit@champion")
    rows = pd.DataFrame(
        [{"image": str(image), "prompt": p, "seed": 3} for p in ("a red ball bouncing", "")]
    )
    out, no_prompt = served.predict(rows, params={"output": "arrays"})
    assert out["audio_decoder"] == "hifigan"
    assert out["frames"].shape == (4, 16, 16, 3) and out["frames"].dtype == np.uint8
    # 25 latent frames -> 100 mel frames -> 160 samples each
    assert out["audio"].shape == (16000,) and out["audio"].dtype == np.float32
    # the vocoder's sound, not the silence a float16 underflow gives
    assert np.isfinite(out["audio"]).all() and np.abs(out["audio"]).max() > 1e-3
    assert out["fps"] == 4.0 and out["sample_rate"] == 16000
    # the prompt's CLIP features reach the model: the same seed without it samples otherwise
    assert not np.array_equal(out["audio"], no_prompt["audio"])
