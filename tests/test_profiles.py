"""Params profiles: what DVC writes from a profile is the overlay, and the gpu profile is the
paper's configuration."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from dvc.utils.hydra import apply_overrides

from flows.cli import main
from jointdit.conditioning import conditioning_dims
from jointdit.config import from_dict
from jointdit.model.joint import BackboneModelConfig
from jointdit.training import TrainConfig
from tasks.encoding import codec_config, codec_from, conditioning_from
from tasks.finetune import finetune_config
from tasks.model_config import model_config
from tasks.params import load_params
from tasks.profiles import load_profile, overlay, set_params_args

REPO = Path(__file__).resolve().parent.parent


def test_dvc_writes_the_overlay_of_the_gpu_profile(tmp_path):
    """`dvc exp run -S` applies the arguments with this DVC function; read back as the stages
    read params, the result is the overlay (floats such as 2e-05 included)."""
    params, profile = load_params(REPO / "params.yaml"), load_profile("gpu", REPO / "profiles")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    args = set_params_args(profile)
    assert args[::2] == ["-S"] * (len(args) // 2)
    apply_overrides(str(tmp_path / "params.yaml"), args[1::2])
    assert load_params(tmp_path / "params.yaml") == overlay(params, profile)


def test_overlay_sets_leaves_and_refuses_unknown_sections():
    params = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": 4}
    out = overlay(params, {"a": {"c": {"d": 5}, "new": 6}})
    assert out == {"a": {"b": 1, "c": {"d": 5, "e": 3}, "new": 6}, "f": 4}
    assert params["a"]["c"]["d"] == 2  # the input is left alone
    with pytest.raises(KeyError, match="section typo"):
        overlay(params, {"typo": {"x": 1}})
    with pytest.raises(FileNotFoundError, match="profiles: \\['film', 'gpu'\\]"):
        load_profile("nope", REPO / "profiles")


def test_gpu_profile_is_the_paper_scale_pretrained_system():
    params = overlay(load_params(REPO / "params.yaml"), load_profile("gpu", REPO / "profiles"))
    clip = params["clip"]
    assert (clip["width"], clip["height"], clip["sample_rate"]) == (576, 320, 16000)
    # real clips: no impact oracle, so the gate reads a metric that evaluate still writes
    assert not params["evaluate"]["oracle"] and params["register"]["gate"]["primary"] == "av_align"
    assert clip["duration_s"] * clip["fps"] == 14 and clip["fps"] == 7

    codec = codec_config(params)
    assert (codec.video, codec.audio) == ("svd", "audioldm2")
    assert codec.svd.path and codec.audioldm2.path
    conditioning = conditioning_from(params)
    assert (conditioning.encoder, conditioning.clip_model) == ("clip", "ViT-B-16")
    assert conditioning_dims(conditioning) == (512, 512)

    # the sizes a loaded svd + audioldm2 codec pair reports at 16 kHz (hop 160, VAE /4)
    latents = SimpleNamespace(audio_channels=8, audio_bins=16, audio_frame_rate=25.0)
    cfg = model_config(params, latents)
    assert isinstance(cfg, BackboneModelConfig)
    assert (cfg.text_embed_dim, cfg.image_embed_dim, cfg.text_len) == (512, 512, 77)
    assert (cfg.audio_channels, cfg.audio_bins) == (8, 16)
    assert cfg.svd.video_fps == 7 and cfg.audioldm.audio_frame_rate == 25
    assert cfg.svd.path == params["model"]["backbones"]["svd"]["path"]
    for stage in ("experts", "stage_a", "stage_b"):
        train = from_dict(TrainConfig, params[stage], stage)  # every key a TrainConfig field
        assert stage == "experts" or (train.bf16 and train.grad_checkpointing)
    assert params["experts"]["steps"] == 0  # the pretrained UNets are the experts
    finetune = finetune_config(params)  # every key known; LoRA, at the training stages' memory
    assert finetune.method == "lora" and finetune.train.bf16 and finetune.train.grad_checkpointing


def test_cli_prints_the_experiment_command(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    main(["profile", "gpu"])
    printed = shlex.split(capsys.readouterr().out)
    assert printed[:5] == ["dvc", "exp", "run", "--name", "gpu"]
    # the shell quoting round-trips: the arguments are the ones DVC gets with --run
    assert printed[5:] == set_params_args(load_profile("gpu", REPO / "profiles"))


def test_film_profile_builds_its_model_on_its_codec():
    """The film's HiFi-GAN mel has 80 bins: the profile's audio patch must divide them."""
    params = overlay(load_params(REPO / "params.yaml"), load_profile("film", REPO / "profiles"))
    cfg = model_config(params, codec_from(params))
    assert (cfg.audio_bins, cfg.audio_patch_f) == (80, 16)


# What evaluate needs for a metric to exist (tasks/evaluate.py); a gate on a metric the run
# never computes fails only at register, after the whole pipeline has trained.
NEEDS = {
    "oracle_": lambda p: p["evaluate"]["oracle"],
    "fad": lambda p: p["evaluate"]["embedders"]["vggish"],
    "fvd": lambda p: p["evaluate"]["embedders"]["i3d"],
    "desync": lambda p: p["evaluate"]["embedders"]["synchformer"],
}


@pytest.mark.parametrize("profile", [None, "gpu", "film"])
def test_each_profile_gates_on_metrics_its_evaluation_computes(profile):
    params = load_params(REPO / "params.yaml")
    if profile:
        params = overlay(params, load_profile(profile, REPO / "profiles"))
    gate = params["register"]["gate"]
    for metric in (gate["primary"], *gate["guards"]):
        for prefix, needed in NEEDS.items():
            if metric.startswith(prefix):
                assert needed(params), f"{profile or 'params.yaml'}: the gate's {metric} is off"


def _disagreements(cls: type, section: dict, where: str) -> list[str]:
    import dataclasses

    default, found = cls(), []
    for f in dataclasses.fields(cls):
        if f.name not in section:
            continue
        value, given = getattr(default, f.name), section[f.name]
        if dataclasses.is_dataclass(value) and isinstance(given, dict):
            found += _disagreements(type(value), given, f"{where}.{f.name}")
        elif (list(value) if isinstance(value, tuple) else value) != given:
            found.append(f"{where}.{f.name}: default {value!r}, params.yaml {given!r}")
    return found


def test_config_defaults_agree_with_params_yaml():
    """A config built without params (a notebook, a test) is the default run's."""
    from jointdit.codecs import CodecConfig
    from jointdit.conditioning import ConditioningConfig
    from jointdit.data.manifest import ValidationConfig
    from jointdit.data.synthetic import SyntheticConfig
    from jointdit.data.windows import ClipSpec
    from jointdit.evaluation import EvaluateConfig
    from jointdit.flow import FlowConfig
    from jointdit.generate import SampleConfig
    from jointdit.model.jointdit import JointDiTConfig
    from tasks.cache import CacheRun
    from tasks.register import GateConfig

    p = load_params(REPO / "params.yaml")
    pairs = [
        (ValidationConfig, p["validate"], "validate"),
        (SyntheticConfig, p["data"]["synthetic"], "data.synthetic"),
        (ClipSpec, p["clip"], "clip"),
        (CodecConfig, p["codec"], "codec"),
        (ConditioningConfig, p["conditioning"], "conditioning"),
        (JointDiTConfig, p["model"], "model"),
        (FlowConfig, p["flow"], "flow"),
        (SampleConfig, p["sample"], "sample"),
        (EvaluateConfig, p["evaluate"], "evaluate"),
        (GateConfig, p["register"]["gate"], "register.gate"),
        (CacheRun, p["cache"], "cache"),
    ]
    assert [d for cls, section, where in pairs for d in _disagreements(cls, section, where)] == []
