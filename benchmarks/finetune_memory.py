"""Memory of the LoRA fine-tune (tasks/finetune.py) against full training.

1. Paper scale, computed (not measured): the model of benchmarks/paper_scale.py built on the meta
   device, LoRA adapters put on it where the gpu profile's `finetune.lora` says (rank, targets).
   Trainable parameters and weights + gradients + AdamW states for: LoRA (frozen UNets bf16,
   frozen joint layers fp32, adapters fp32 with grads and two moments: 16 bytes each), the gpu
   profile's Stage B (its `trainable` patterns at 16 bytes, the rest of the UNets bf16), and
   every weight trained (16 bytes each).
2. Default size (params.yaml), measured on CPU: peak resident memory of `--steps` training steps
   (jointdit.training.train, batch `finetune.batch_size`, on random latents of the default
   shapes) for LoRA (`finetune.lora`) and for full Stage B (`stage_b.trainable`), each in a fresh
   subprocess, beside the peak of the same process before training (model and data built).

    python benchmarks/finetune_memory.py [--steps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from paper_scale import AUDIOLDM_S_UNET, CFG, GIB, SVD_UNET, count
from train_step import batch_for

from jointdit.backbones.timemaps import DDPMSchedule
from jointdit.config import from_dict
from jointdit.finetune import add_adapters
from jointdit.flow import FlowConfig
from jointdit.model.joint import build_from_unets
from jointdit.model.jointdit import JointDiT
from jointdit.training import TrainConfig, train
from tasks.encoding import codec_from
from tasks.finetune import finetune_config
from tasks.model_config import model_config
from tasks.params import load_params
from tasks.profiles import load_profile, overlay

ROOT = Path(__file__).resolve().parent.parent
UNETS = ("video.unet.", "audio.unet.")


def paper_scale() -> None:
    from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

    params = overlay(load_params(ROOT / "params.yaml"), load_profile("gpu", ROOT / "profiles"))
    lora = finetune_config(params).lora
    with torch.device("meta"):
        video = UNetSpatioTemporalConditionModel(**SVD_UNET)
        audio = UNet2DConditionModel(**AUDIOLDM_S_UNET)
        model = build_from_unets(CFG, video, audio, DDPMSchedule())
    total = count(model)
    weights = {n: p.numel() for n, p in model.named_parameters()}
    in_unets = sum(v for n, v in weights.items() if n.startswith(UNETS))

    def stored(names: set[str]) -> int:
        """Bytes of frozen weights: the UNets' in bf16, the joint layers' in fp32."""
        return sum(weights[n] * (2 if n.startswith(UNETS) else 4) for n in names)

    stage_b = {
        n for n in weights if any(fnmatch.fnmatchcase(n, p) for p in params["stage_b"]["trainable"])
    }
    stage_b_bytes = 16 * sum(weights[n] for n in stage_b) + stored(set(weights) - stage_b)

    layers = add_adapters(model, lora)
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    in_unet_layers = sum(n.startswith(UNETS) for n in layers)
    lora_bytes = 16 * adapters + stored(set(weights))
    rows = [
        (f"LoRA r={lora.rank} ({len(layers)} layers, {in_unet_layers} in the UNets)", adapters,
         lora_bytes),
        ("Stage B of the gpu profile (named layers in full)", sum(weights[n] for n in stage_b),
         stage_b_bytes),
        ("every weight trained (fp32 w/grad/AdamW)", total, 16 * total),
    ]  # fmt: skip
    print(f"paper scale: {total:,d} parameters, {in_unets:,d} of them in the two UNets")
    print(f"{'training':58s} {'trainable':>14s} {'w+grad+AdamW GiB':>17s}")
    for name, n, size in rows:
        print(f"{name:58s} {n:14,d} {size / GIB:17.2f}")
    print("(activations not included: they scale with batch and are cut by checkpointing)")


def measure(kind: str, steps: int) -> dict[str, float]:
    """In this process: build the default model and data, train `steps` steps; max RSS (MiB)
    before and after training."""
    torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml")
    codec = codec_from(params)
    torch.manual_seed(0)
    model = JointDiT(model_config(params, codec))
    ft = finetune_config(params)
    if kind == "lora":
        add_adapters(model, ft.lora)
        cfg = ft.train
    else:
        cfg = from_dict(TrainConfig, params["stage_b"], "stage_b")
    cfg = dataclasses.replace(cfg, steps=steps, eval_every=steps, batch_size=ft.train.batch_size)
    data = batch_for(params, codec, 2 * cfg.batch_size, "cpu")
    val = batch_for(params, codec, 2, "cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    train(model, data, val, cfg, from_dict(FlowConfig, params["flow"], "flow"), progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"before_mib": before, "peak_mib": after, "trainable": trainable, "bf16": cfg.bf16}


def default_size(steps: int) -> None:
    print(f"\ndefault size (params.yaml), CPU, {steps} training steps, peak resident memory:")
    print(f"{'training':34s} {'trainable':>11s} {'before MiB':>11s} {'peak MiB':>9s} "
          f"{'training MiB':>13s}")  # fmt: skip
    for kind, name in (("stage_b", "full Stage B (stage_b.trainable)"), ("lora", "LoRA")):
        cmd = [sys.executable, __file__, "--one", kind, "--steps", str(steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.splitlines()[-1])
        print(f"{name:34s} {r['trainable']:11,d} {r['before_mib']:11.0f} {r['peak_mib']:9.0f} "
              f"{r['peak_mib'] - r['before_mib']:13.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", choices=("lora", "stage_b"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    paper_scale()
    default_size(args.steps)


if __name__ == "__main__":
    main()
