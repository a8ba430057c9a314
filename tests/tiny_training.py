"""Tiny training runs for the resume, DDP and fault tests: the tiny model trained in-process
with resume checkpoints (stoppable after any step, like a crash), a check that two runs ended
at the same weights, and a workspace with a tiny latent cache for a tiny `experts` stage."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from jointdit.flow import FlowConfig
from jointdit.model.jointdit import JointDiT
from jointdit.training import TrainConfig, train
from tests.conftest import TINY, tiny_batch

REPO = Path(__file__).resolve().parent.parent
# checkpoints every 3 of 7 steps: a run can stop before, at, just after and between them
TINY_TRAIN = TrainConfig(
    steps=7, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=3, checkpoint_every=3,
    ema_decay=0.9,
)  # fmt: skip


class Stop(Exception):
    """Raised from the log callback: the run dies after that step, like a crash."""


def run_tiny(
    resume_dir: Path | None,
    cfg: TrainConfig = TINY_TRAIN,
    stop_after: int | None = None,
    log=None,
) -> tuple[JointDiT, list[dict[str, float]]]:
    """Train the tiny model (seed 0) on `tiny_batch`, resuming from and checkpointing to
    `resume_dir` (none: no checkpoints); raise `Stop` after step `stop_after`."""
    torch.manual_seed(0)
    model = JointDiT(TINY)

    def on_step(step: int, record: dict[str, float]) -> None:
        if log is not None:
            log(step, record)
        if step == stop_after:
            raise Stop

    history = train(
        model, tiny_batch(), tiny_batch(), cfg, FlowConfig(), on_step, False, resume_dir
    )
    return model, history


def assert_same_model(a: JointDiT, b: JointDiT) -> None:
    """The two models hold equal tensors, name for name."""
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def tiny_stage_workspace(root: Path) -> dict:
    """A workspace with a tiny latent cache, and params for a tiny `experts` stage in it."""
    from jointdit.data.shards import write_index, write_shard
    from tasks.encoding import codec_from

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"] = {"tracking_uri": "sqlite:///mlflow.db", "experiment": "ddp"}
    params["model"].update(dim=32, depth=1, heads=2, text_vocab=64, text_len=6)
    # float32: two processes make one process's update up to float32 rounding (bf16 autocast
    # would round each process's half batch differently)
    params["experts"].update(steps=4, batch_size=4, warmup_steps=1, eval_every=2, bf16=False)
    codec = codec_from(params)
    g = torch.Generator().manual_seed(0)
    entries = []
    (root / "data/cache").mkdir(parents=True)
    for split, n in (("train", 6), ("val", 2)):
        video = torch.randn(n, 2, codec.video_channels, 4, 4, generator=g)
        tensors = {
            "video": video,
            "audio": torch.randn(n, codec.audio_channels, codec.audio_bins, 8, generator=g),
            "image": video[:, 0].clone(),
            "text": torch.randint(1, 64, (n, 6), generator=g),
        }
        write_shard(root / "data/cache" / f"{split}-0000.safetensors", tensors, [{}] * n)
        entries.append({"file": f"{split}-0000.safetensors", "split": split, "clips": n})
    write_index(root / "data/cache", {"shards": entries})
    return params
