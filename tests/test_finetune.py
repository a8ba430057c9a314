"""LoRA fine-tuning (jointdit/finetune.py, tasks/finetune.py) on tiny models of both kinds: the
adapted model starts as its parent exactly, training moves the adapters only, the merged model
computes what the adapted one did, and the stage's config and checks refuse what cannot work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel
from safetensors.torch import load_file

from jointdit.backbones.timemaps import DDPMSchedule
from jointdit.checkpoint import load_checkpoint, save_checkpoint
from jointdit.finetune import (
    ADAPTER_PARAMETERS,
    CONFIG,
    WEIGHTS,
    AdapterConfig,
    adapter_layers,
    add_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    target_modules,
)
from jointdit.flow import Batch, FlowConfig
from jointdit.model.joint import build_from_unets
from jointdit.training import TrainConfig, train
from tasks.finetune import finetune_config
from tasks.profiles import load_profile
from tests.conftest import randomize, tiny_inputs
from tests.pretrained_fixtures import AUDIOLDM_TINY, SVD_TINY
from tests.tiny_backbones import MODEL_CFG, joint_inputs

DIT_TARGETS = ("blocks.*.joint.*", "blocks.*.video_expert.attn.*", "blocks.*.audio_expert.attn.*")
REPO = Path(__file__).resolve().parent.parent
# the backbones path's adapters, as the gpu profile places them
UNET_TARGETS = tuple(load_profile("gpu", REPO / "profiles")["finetune"]["lora"]["targets"])


def forward(model, x, **kw):
    with torch.no_grad():
        return model(**x, **kw)


def tiny_batch(n=6, seed=1) -> Batch:
    x = tiny_inputs(b=n, seed=seed)
    return Batch(x["video"], x["audio"], x["image"], x["text"])


@pytest.fixture
def backbone_model():
    torch.manual_seed(0)
    video = randomize(UNetSpatioTemporalConditionModel(**SVD_TINY), 1)
    audio = randomize(UNet2DConditionModel(**AUDIOLDM_TINY), 2)
    model = build_from_unets(MODEL_CFG, video, audio, DDPMSchedule())
    for k, layer in enumerate(model.joint):
        randomize(layer, 3 + k)  # open joint layers: an adapter there changes the output
    return model.eval()


def trained_adapters(model, cfg=None, steps=3):
    """`model` with adapters (`cfg`, else on DIT_TARGETS) trained for a few steps."""
    add_adapters(model, cfg or AdapterConfig(targets=DIT_TARGETS))
    train_cfg = TrainConfig(
        steps=steps, batch_size=2, lr=1e-2, warmup_steps=1, trainable=ADAPTER_PARAMETERS,
        eval_every=steps,
    )  # fmt: skip
    train(model, tiny_batch(), tiny_batch(2, seed=2), train_cfg, FlowConfig(), progress=False)
    return model.eval()


@pytest.mark.parametrize("kw", [{}, {"iso": True}, {"experts_only": True}])
def test_adapted_dit_equals_its_parent_exactly_at_step_0(tiny_model, kw):
    adapted = copy.deepcopy(tiny_model)
    names = add_adapters(adapted, AdapterConfig(rank=4, alpha=8.0, targets=DIT_TARGETS))
    # every joint-layer linear (qkv x2, context_kv, out x2, feed-forward x4, modulation x2)
    # and both experts' attention projections (qkv, out), in each of the 2 blocks
    assert len(names) == len(adapter_layers(adapted)) == 2 * (11 + 2 * 2)
    for layer in adapter_layers(adapted).values():
        assert layer.lora_A["default"].weight.abs().sum() > 0  # A random, B zero: no update
        assert layer.lora_B["default"].weight.abs().sum() == 0
    x = tiny_inputs()
    for got, expected in zip(forward(adapted, x, **kw), forward(tiny_model, x, **kw), strict=True):
        assert torch.equal(got, expected)


def test_adapted_backbone_model_equals_its_parent_exactly_at_step_0(backbone_model):
    adapted = copy.deepcopy(backbone_model)
    names = add_adapters(adapted, AdapterConfig(targets=UNET_TARGETS))
    # the UNets' attention projections (q, k, v, out of self- and cross-attention) are adapted
    assert any(n.startswith("video.unet.") and n.endswith("attn2.to_k") for n in names)
    assert any(n.startswith("audio.unet.") and n.endswith("attn1.to_out.0") for n in names)
    assert any(n.startswith("joint.") for n in names)
    x = joint_inputs()
    for got, expected in zip(forward(adapted, x), forward(backbone_model, x), strict=True):
        assert torch.equal(got, expected)


def test_training_moves_only_the_adapters(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = trained_adapters(copy.deepcopy(tiny_model))
    after = model.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if ".lora_" not in k}
    assert base.keys() == before.keys()
    assert all(torch.equal(base[k], before[k]) for k in before)
    lora_b = [k for k in after if ".lora_B." in k]
    moved = [k for k in lora_b if after[k].abs().sum() > 0]
    assert len(moved) == len(lora_b) > 0  # every adapter learned something
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    x = tiny_inputs()
    assert not torch.equal(forward(model, x)[0], forward(tiny_model, x)[0])


def test_merged_and_unmerged_forwards_agree_and_the_merge_saves_as_the_parent(
    tiny_model, tmp_path
):
    model = trained_adapters(copy.deepcopy(tiny_model))
    x = tiny_inputs()
    unmerged = forward(model, x)
    merged_model = merge_adapters(model)
    assert not adapter_layers(merged_model) and not hasattr(merged_model, "peft_config")
    assert type(merged_model) is type(tiny_model)
    assert merged_model.state_dict().keys() == tiny_model.state_dict().keys()
    merged = forward(merged_model, x)
    # float32 rounding of (W + s B A) x against W x + s B (A x), through two blocks and the
    # velocity's division by t (>= 0.25 here); the adapters' own effect is far above it
    assert (unmerged[0] - forward(tiny_model, x)[0]).abs().max() > 1e-2
    for m, u in zip(merged, unmerged, strict=True):
        torch.testing.assert_close(m, u, rtol=1e-4, atol=1e-4)
    # the project's checkpoint format and loader, unchanged
    save_checkpoint(tmp_path / "ckpt", merged_model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    for a, b in zip(forward(loaded, x), merged, strict=True):
        assert torch.equal(a, b)


def test_merged_backbone_model_agrees_with_its_adapters(backbone_model):
    model = copy.deepcopy(backbone_model)
    add_adapters(model, AdapterConfig(targets=UNET_TARGETS))
    for layer in adapter_layers(model).values():  # a trained update's stand-in: B not zero
        randomize(layer.lora_B["default"], 9)
    x = joint_inputs()
    unmerged = forward(model, x)
    assert not torch.allclose(unmerged[0], forward(backbone_model, x)[0])
    merged = forward(merge_adapters(model), x)
    assert model.state_dict().keys() == backbone_model.state_dict().keys()
    for m, u in zip(merged, unmerged, strict=True):
        torch.testing.assert_close(m, u, rtol=1e-4, atol=1e-4)


def test_adapters_save_in_peft_layout_and_load_back(tiny_model, tmp_path):
    cfg = AdapterConfig(rank=4, alpha=4.0, targets=DIT_TARGETS)
    model = trained_adapters(copy.deepcopy(tiny_model), cfg)
    save_adapters(tmp_path, model, cfg, {"parent_version": "3"})
    state = load_file(str(tmp_path / WEIGHTS))
    assert "blocks.0.joint.video_qkv.lora_A.weight" in state
    assert state["blocks.0.joint.video_qkv.lora_A.weight"].shape == (4, 32)
    assert all(".lora_" in k for k in state)
    assert '"parent_version": "3"' in (tmp_path / CONFIG).read_text()
    again = copy.deepcopy(tiny_model)
    assert load_adapters(tmp_path, again) == cfg
    x = tiny_inputs()
    for a, b in zip(forward(again, x), forward(model, x), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"match no nn\.Linear"):
        load_adapters(tmp_path, randomize(build_other_model()))


def build_other_model():
    return torch.nn.Sequential(torch.nn.Linear(2, 2))


def test_a_target_pattern_matching_no_layer_is_an_error_naming_it(tiny_model):
    assert target_modules(tiny_model, ("video_input.*",)) == ["video_input.proj"]
    with pytest.raises(ValueError, match=r"\['blocks\.\*\.jiont\.\*'\] match no nn.Linear"):
        add_adapters(tiny_model, AdapterConfig(targets=("blocks.*.joint.*", "blocks.*.jiont.*")))
    with pytest.raises(ValueError, match="rank 0 must be >= 1"):
        AdapterConfig(rank=0)


def test_finetune_params_parse_into_typed_config():
    params = {"seed": 3, "finetune": {"model_uri": "models:/m/2", "lora": {"rank": 2}, "steps": 5}}
    cfg = finetune_config(params)
    assert cfg.model_uri == "models:/m/2" and cfg.method == "lora" and cfg.lora.rank == 2
    assert cfg.train.steps == 5 and cfg.train.seed == 3
    assert cfg.train.trainable == ADAPTER_PARAMETERS and cfg.train.frozen == ()
    full = finetune_config({"seed": 0, "finetune": {"method": "full", "trainable": ["blocks.*"]}})
    assert full.train.trainable == ("blocks.*",)
    with pytest.raises(ValueError, match="apply to method: full"):
        finetune_config({"seed": 0, "finetune": {"trainable": ["*"]}})
    with pytest.raises(ValueError, match=r"finetune\.method must be one of"):
        finetune_config({"seed": 0, "finetune": {"method": "qlora"}})
    with pytest.raises(ValueError, match=r"finetune: unknown keys \['stpes'\]"):
        finetune_config({"seed": 0, "finetune": {"stpes": 5}})
