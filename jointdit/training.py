"""The training loop shared by the experts, Stage A and Stage B stages.

Which parameters learn is declared by name: glob patterns over `model.named_parameters()`
(e.g. "blocks.*.joint.*"), so a stage's contract is readable in params.yaml.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from jointdit.distributed import current
from jointdit.flow import (
    Batch,
    FlowConfig,
    draw_noise,
    drop_conditions,
    flow_loss,
    frame_times,
    holds_first_frame,
    noised,
    sample_t,
)
from jointdit.model.interface import JointModel
from jointdit.train_state import fingerprint, restore_state, save_state


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    trainable: tuple[str, ...] = ("*",)
    frozen: tuple[str, ...] = ()  # excluded even when matched by `trainable`
    experts_only: bool = False  # skip the joint layers (the experts stage)
    eval_every: int = 50
    grad_checkpointing: bool = False  # less activation memory, one more forward per step
    bf16: bool = False  # bf16 autocast; 1.3x faster per step on this 2-core CPU (benchmarks/)
    compile: bool = False  # torch.compile the model for the training steps
    # micro-batches per step: the same update as one batch, with 1/grad_accum of the activations
    grad_accum: int = 1
    # EMA of the trainable weights (decay warmed up as min(decay, (1+n)/(10+n))), which become
    # the final weights; 0 = off. Validation during training still sees the raw weights.
    ema_decay: float = 0.0
    checkpoint_every: int = 100  # resume checkpoints, when train() is given a resume_dir
    keep_checkpoints: int = 2


def set_trainable(
    model: JointModel, trainable: tuple[str, ...], frozen: tuple[str, ...]
) -> list[str]:
    """Set requires_grad by pattern; returns the trainable names. No match is an error."""
    names = []
    for name, p in model.named_parameters():
        p.requires_grad = any(fnmatch.fnmatchcase(name, pat) for pat in trainable) and not any(
            fnmatch.fnmatchcase(name, pat) for pat in frozen
        )
        if p.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"no parameter matches trainable={trainable} minus frozen={frozen}")
    return names


def subset(batch: Batch, idx: torch.Tensor) -> Batch:
    emb = batch.image_embedding
    return Batch(
        batch.video[idx],
        batch.audio[idx],
        batch.image[idx],
        batch.text[idx],
        None if emb is None else emb[idx],
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on the model's device. Random draws stay on the CPU generator, so a GPU run
    sees the same batches, times and noise as a CPU run (and every rank the same ones)."""
    emb = batch.image_embedding
    return Batch(
        batch.video.to(device),
        batch.audio.to(device),
        batch.image.to(device),
        batch.text.to(device),
        None if emb is None else emb.to(device),
    )


@torch.no_grad()
def validation_loss(
    model: JointModel, data: Batch, flow: FlowConfig, experts_only: bool = False, seed: int = 0
) -> dict[str, float]:
    """Loss on a fixed grid of t and fixed noise, so values are comparable across models."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    grid = (0.1, 0.3, 0.5, 0.7, 0.9)
    on_device = to_device(data, device)
    hold = holds_first_frame(model)
    for t in grid:
        tt = torch.full((len(data),), t, device=device)
        tv = frame_times(tt, data.video.shape[1], hold)
        noise = tuple(n.to(device) for n in draw_noise(data, generator))
        _, parts = flow_loss(
            model, on_device, tv, tt, generator, flow.audio_weight, experts_only, noise=noise
        )
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v / len(grid)
    model.train(was_training)
    return totals


@torch.no_grad()
def condition_sensitivity(
    model: JointModel, data: Batch, t: float = 0.9, seed: int = 0, experts_only: bool = False
) -> dict[str, float]:
    """How much the model's clean-video estimate x0 = x_t - t v of frames 1.. moves when each
    clip is given the next clip's image (and, for a model holding it, first frame), at time t.

    `swap`: rms change of that estimate; `clips`: rms difference of the two clips' own frames
    1.., the change a model that continues its image would make; `error`: rms error of the
    estimate. A model that ignores its condition has swap near 0 whatever clips is.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    data = to_device(data, device)
    n, frames = data.video.shape[:2]
    other = torch.roll(torch.arange(n), 1)
    noise_v, noise_a = (x.to(device) for x in draw_noise(data, generator))
    t_v = frame_times(torch.full((n,), t, device=device), frames, holds_first_frame(model))
    t_a = torch.full((n,), t, device=device)

    def estimate(video: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x_t = noised(video, noise_v, t_v)
        v, _ = model(
            x_t, noised(data.audio, noise_a, t_a), t_v, t_a, image, data.text,
            experts_only=experts_only, image_embedding=data.image_embedding,
        )  # fmt: skip
        return (x_t - t * v)[:, 1:]

    own = estimate(data.video, data.image)
    # the other clip's first frame, this clip's later frames (only the condition changes)
    swapped_video = torch.cat((data.video[other, :1], data.video[:, 1:]), dim=1)
    swapped = estimate(swapped_video, data.image[other])
    model.train(was_training)

    def rms(x: torch.Tensor) -> float:
        return float(x.square().mean().sqrt())

    return {
        "swap": rms(swapped - own),
        "clips": rms(data.video[other, 1:] - data.video[:, 1:]),
        "error": rms(own - data.video[:, 1:]),
    }


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: JointModel,
    train_data: Batch,
    val_data: Batch,
    cfg: TrainConfig,
    flow: FlowConfig,
    log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
    progress: bool = True,
    resume_dir: Path | None = None,
) -> list[dict[str, float]]:
    """Train in place; returns the history of logged metrics (train and val losses).

    Under an initialised process group of several ranks (torchrun, see jointdit.distributed)
    this is data-parallel training of the same run: every rank draws the same global batch from
    the same generator and computes its slice of it, and the gradients are summed over ranks,
    so the update is the single-process one (up to float summation order). Only rank 0 logs,
    validates, and writes checkpoints; its history is the run's (the other ranks' lack the
    validation losses). Every rank ends with the same weights.

    With `resume_dir`, the whole training state is saved there every `checkpoint_every` steps
    and after the last one, and a run restarts from the newest checkpoint of the same run
    (settings, starting weights and data), ending with the same weights as an uninterrupted
    run. Every random draw comes from one generator (and torch's global RNG, seeded here), both
    checkpointed.
    """
    rank, world = current()
    if not 1 <= cfg.grad_accum <= cfg.batch_size // world:
        raise ValueError(
            f"grad_accum={cfg.grad_accum} must be in [1, batch_size / processes] "
            f"(batch_size={cfg.batch_size} over {world} process(es))"
        )
    torch.manual_seed(cfg.seed)
    names = set(set_trainable(model, cfg.trainable, cfg.frozen))
    params = [p for n, p in model.named_parameters() if n in names]
    # fused: one kernel over all parameters per step, where the default runs about ten small
    # ones per tensor (a fifth of the default model's CPU step went there)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    ema = {
        n: p.detach().clone() for n, p in model.named_parameters() if n in names and cfg.ema_decay
    }
    history: list[dict[str, float]] = []
    start = 0
    if resume_dir is not None:
        key = fingerprint(
            {"train": asdict(cfg), "flow": asdict(flow)},
            [
                *model.state_dict().values(),
                *(t for t in vars(train_data).values() if t is not None),
            ],
        )
        # rank 0 first: it clears stale and partial files, then the others read what it read
        if rank > 0:
            dist.barrier()
        restored = restore_state(resume_dir, key, model, ema, optimizer, generator)
        if rank == 0 and world > 1:
            dist.barrier()
        if restored is not None:
            start, history = restored
    model.train()
    model.grad_checkpointing = cfg.grad_checkpointing
    hold = holds_first_frame(model)
    device = next(model.parameters()).device
    ddp = None
    if world > 1:
        # unused parameters exist (the image-embedding input without embeddings, the joint
        # layers under experts_only): DDP must be told to look for them
        ddp = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    step_model = ddp if ddp is not None else model
    step_model = torch.compile(step_model) if cfg.compile else step_model
    # this rank's slice of every batch, cut into micro-batches
    micros = torch.arange(cfg.batch_size).tensor_split(world)[rank].chunk(cfg.grad_accum)
    bar = tqdm(
        range(start, cfg.steps),
        desc="train",
        initial=start,
        total=cfg.steps,
        disable=not progress or rank > 0,
        dynamic_ncols=True,
    )
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(train_data), (cfg.batch_size,), generator=generator)
        batch = drop_conditions(subset(train_data, idx), flow, generator)
        t_v, t_a = sample_t(cfg.batch_size, flow, generator)
        noise = draw_noise(batch, generator)
        # each micro-batch's loss is its share of the whole batch's (masked) mean
        counts = ((t_v > 0).sum().float().to(device), (t_a > 0).sum().float().to(device))
        t_v = frame_times(t_v, batch.video.shape[1], hold)
        optimizer.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        for i, micro in enumerate(micros):
            # gradients are all-reduced once per step, with the last micro-batch's backward
            syncing = ddp is None or i == len(micros) - 1
            with (
                contextlib.nullcontext() if syncing else ddp.no_sync(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16),
            ):
                loss, micro_parts = flow_loss(
                    step_model,
                    to_device(subset(batch, micro), device),
                    t_v[micro].to(device),
                    t_a[micro].to(device),
                    generator,
                    flow.audio_weight,
                    cfg.experts_only,
                    noise=(noise[0][micro].to(device), noise[1][micro].to(device)),
                    counts=counts,
                )
                # DDP averages gradients over ranks; the shares must be summed
                (loss * world if world > 1 else loss).backward()
            for k, v in micro_parts.items():
                parts[k] = parts.get(k, 0.0) + v
        if world > 1:
            summed = torch.tensor(list(parts.values()), dtype=torch.float64, device=device)
            dist.all_reduce(summed)
            parts = dict(zip(parts, summed.tolist(), strict=True))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if ema:
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in ema:
                        ema[n].lerp_(p, 1 - decay)
        record = {f"train_{k}": v for k, v in parts.items()}
        record.update(step=step + 1, lr=lr_at(step, cfg), grad_norm=float(grad_norm))
        if rank == 0 and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            val = validation_loss(model, val_data, flow, cfg.experts_only)
            record.update({f"val_{k}": v for k, v in val.items()})
            swap = condition_sensitivity(model, val_data, experts_only=cfg.experts_only)["swap"]
            record["val_condition_swap"] = swap
        history.append(record)
        # saved before the log callback runs: a crash there loses no finished step; and at the
        # last step, so a stage that fails after training (its upload) resumes with nothing left
        checkpoint = (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps
        if rank == 0 and resume_dir is not None and checkpoint:
            save_state(
                resume_dir,
                step + 1,
                key,
                model,
                ema,
                optimizer,
                generator,
                history,
                cfg.keep_checkpoints,
            )
        if rank == 0:
            log(step + 1, record)
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
    if ema:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in ema:
                    p.copy_(ema[n])
    return history
