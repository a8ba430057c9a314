"""Resume checkpoints: everything a training run needs to continue as if never stopped.

A run killed at any point (SIGKILL included) resumes from its newest checkpoint and ends with
the same weights as an uninterrupted run, so a checkpoint holds the whole state: model, EMA and
optimizer tensors (safetensors), and the step, the RNG states and the loss history (JSON).
The learning-rate schedule is a function of the step, so the step is its whole state.

Each checkpoint is two files, `step-<n>.safetensors` then `step-<n>.json`, each written to a
temporary name, synced and renamed: the JSON is written last, so a checkpoint counts as
complete once its JSON exists, and a run killed mid-write leaves only a hidden temporary file.
The JSON holds the SHA-256 of the tensor file and of its own content: a file edited by hand
(still well-formed, other numbers) is refused instead of resumed as if a run had produced it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from jointdit.atomic import atomic_path
from jointdit.data.manifest import sealed_digest, sha256_file

log = logging.getLogger(__name__)

PREFIX = "step-"


def fingerprint(meta: dict[str, Any], tensors: Iterable[Tensor]) -> str:
    """A run's identity: its settings and starting tensors (weights, data).

    A checkpoint of another run (changed params, a retrained parent stage) must not be resumed:
    its weights would silently belong to a different experiment.
    """
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for t in tensors:
        flat = t.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _encode_rng(state: Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _decode_rng(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _paths(directory: Path, step: int) -> tuple[Path, Path]:
    stem = directory / f"{PREFIX}{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _complete_steps(directory: Path) -> list[int]:
    """Steps of the complete checkpoints (JSON and tensors present), newest first."""
    steps = []
    for path in directory.glob(f"{PREFIX}*.json"):
        digits = path.stem.removeprefix(PREFIX)
        if digits.isdigit() and _paths(directory, int(digits))[0].is_file():
            steps.append(int(digits))
    return sorted(steps, reverse=True)


def save_state(
    directory: Path,
    step: int,
    key: str,
    model: torch.nn.Module,
    ema: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: list[dict[str, float]],
    keep: int,
) -> None:
    """Write the checkpoint of `step`, then delete all but the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    opt = optimizer.state_dict()
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.items()})
    for index, slots in opt["state"].items():
        tensors.update({f"optim/{index}/{name}": v for name, v in slots.items()})
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    meta = {
        "step": step,
        "key": key,
        "rng": {
            "generator": _encode_rng(generator.get_state()),
            "torch": _encode_rng(torch.get_rng_state()),
        },
        "param_groups": opt["param_groups"],
        "history": history,
    }
    weights, state = _paths(directory, step)
    written = False
    try:
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp))
            meta["sha256"] = {"tensors": sha256_file(tmp)}
        written = True
        meta["sha256"]["state"] = sealed_digest(meta, "state")
        with atomic_path(state) as tmp:
            tmp.write_text(json.dumps(meta))
    except OSError as e:
        # A full disk or a lost mount: the step's files are gone (incomplete ones are never
        # resumed) and the newest complete checkpoint stays as it was.
        if written:
            weights.unlink()
        kept = _complete_steps(directory)
        raise OSError(
            e.errno,
            f"{state}: checkpoint of step {step} not written ({e.strerror or e}); "
            + (f"step {kept[0]} is still the newest checkpoint" if kept else "none is kept"),
        ) from e
    for old in _complete_steps(directory)[max(keep, 1) :]:
        # the JSON first: a checkpoint without it is incomplete, never half-loaded
        for path in reversed(_paths(directory, old)):
            path.unlink(missing_ok=True)


def restore_state(
    directory: Path,
    key: str,
    model: torch.nn.Module,
    ema: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, list[dict[str, float]]] | None:
    """Load the newest complete checkpoint into the objects given: (step, history), or None.

    A checkpoint of another run (different `key`) is deleted, not resumed. A damaged or edited
    one (unreadable JSON or safetensors, checksums that differ, wrong names or shapes) is a
    ValueError naming the file: guessing past it could resume from a state no run ever had.
    """
    if not directory.is_dir():
        return None
    for part in directory.glob(".*.part"):  # a write killed before its rename
        part.unlink()
    steps = _complete_steps(directory)
    if not steps:
        return None
    weights, state = _paths(directory, steps[0])
    try:
        meta = json.loads(state.read_text())
        stale = meta["key"] != key
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{state}: not a readable resume checkpoint ({e!r})") from e
    if stale:
        log.warning(
            "%s: checkpoints of another run (settings or inputs changed); starting over", directory
        )
        for path in directory.glob(f"{PREFIX}*"):
            path.unlink()
        return None
    _verify(weights, state, meta)
    try:
        tensors = load_file(str(weights))
        _load_tensors(tensors, model, ema, optimizer)
        optimizer.load_state_dict(
            {"state": _optimizer_slots(tensors), "param_groups": meta["param_groups"]}
        )
        generator.set_state(_decode_rng(meta["rng"]["generator"]))
        torch.set_rng_state(_decode_rng(meta["rng"]["torch"]))
        return int(meta["step"]), list(meta["history"])
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{weights} / {state.name}: damaged resume checkpoint ({e})") from e


def _verify(weights: Path, state: Path, meta: dict[str, Any]) -> None:
    """Refuse a checkpoint whose files are not the ones its run wrote."""
    try:
        digests = meta["sha256"]
        for path, ok in (
            (state, digests["state"] == sealed_digest(meta, "state")),
            (weights, digests["tensors"] == sha256_file(weights)),
        ):
            if not ok:
                raise ValueError(f"{path}: edited or damaged since it was written (SHA-256)")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{state}: no checksums, not a checkpoint this code wrote") from e


def _optimizer_slots(tensors: dict[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    slots: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, slot = name.split("/", 2)
            slots.setdefault(int(index), {})[slot] = value
    return slots


def _load_tensors(
    tensors: dict[str, Tensor],
    model: torch.nn.Module,
    ema: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Copy model and EMA tensors in place, after checking every name and shape.

    The optimizer's own load_state_dict checks no shapes, so its slots are checked here.
    """
    model.load_state_dict(
        {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    )
    saved_ema = {k.removeprefix("ema/"): v for k, v in tensors.items() if k.startswith("ema/")}
    if saved_ema.keys() != ema.keys():
        raise ValueError(f"EMA tensors {sorted(saved_ema)} != expected {sorted(ema)}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, slots in _optimizer_slots(tensors).items():
        for slot, value in slots.items():
            if index >= len(params) or (value.dim() and value.shape != params[index].shape):
                raise ValueError(f"optimizer slot {index}/{slot} has shape {tuple(value.shape)}")
    for name, value in saved_ema.items():
        if value.shape != ema[name].shape:
            raise ValueError(f"EMA {name} has shape {tuple(value.shape)}")
        ema[name].copy_(value)
