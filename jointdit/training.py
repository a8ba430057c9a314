"""The training loop shared by the experts, Stage A and Stage B stages.

Which parameters learn is declared by name: glob patterns over `model.named_parameters()`
(e.g. "blocks.*.joint.*"), so a stage's contract is readable in params.yaml.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from jointdit.flow import Batch, FlowConfig, drop_conditions, flow_loss, sample_t
from jointdit.model.jointdit import JointDiT


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


def set_trainable(
    model: JointDiT, trainable: tuple[str, ...], frozen: tuple[str, ...]
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


@torch.no_grad()
def validation_loss(
    model: JointDiT, data: Batch, flow: FlowConfig, experts_only: bool = False, seed: int = 0
) -> dict[str, float]:
    """Loss on a fixed grid of t and fixed noise, so values are comparable across models."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    grid = (0.1, 0.3, 0.5, 0.7, 0.9)
    for t in grid:
        tt = torch.full((len(data),), t)
        _, parts = flow_loss(model, data, tt, tt, generator, flow.audio_weight, experts_only)
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v / len(grid)
    model.train(was_training)
    return totals


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: JointDiT,
    train_data: Batch,
    val_data: Batch,
    cfg: TrainConfig,
    flow: FlowConfig,
    log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train in place; returns the history of logged metrics (train and val losses)."""
    torch.manual_seed(cfg.seed)
    names = set(set_trainable(model, cfg.trainable, cfg.frozen))
    params = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    model.train()
    model.grad_checkpointing = cfg.grad_checkpointing
    step_model = torch.compile(model) if cfg.compile else model
    device = next(model.parameters()).device.type
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(train_data), (cfg.batch_size,), generator=generator)
        batch = drop_conditions(subset(train_data, idx), flow, generator)
        t_v, t_a = sample_t(cfg.batch_size, flow, generator)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, parts = flow_loss(
                step_model, batch, t_v, t_a, generator, flow.audio_weight, cfg.experts_only
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        record = {f"train_{k}": v for k, v in parts.items()}
        record.update(step=step + 1, lr=lr_at(step, cfg), grad_norm=float(grad_norm))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val = validation_loss(model, val_data, flow, cfg.experts_only)
            record.update({f"val_{k}": v for k, v in val.items()})
        history.append(record)
        log(step + 1, record)
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
    return history
