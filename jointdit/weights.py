"""Pretrained weights from local files: safetensors or PyTorch state dicts, loaded safely.

Used for every network whose weights the user provides (evaluation embedders, encoders): the
file is read without unpickling arbitrary objects, and a file that does not fit the network
is refused with its name and the first mismatching keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or of a PyTorch state-dict file.

    PyTorch files are opened with ``weights_only=True``; a checkpoint that wraps its weights
    in ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix not in _TORCH_SUFFIXES:
        raise ValueError(
            f"{path}: unknown weights format (expected .safetensors or one of {_TORCH_SUFFIXES})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle and zip errors have many types; the message is the point
        raise ValueError(f"{path}: not a loadable PyTorch weights file ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return state


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """Load ``path`` into ``module`` strictly: every key present, no extra key, same shapes."""
    state = read_state_dict(path)
    expected = module.state_dict()
    # BatchNorm's step counter only matters in training; checkpoints older than PyTorch 0.4.1
    # (e.g. the public I3D port) do not have it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: weights do not fit {type(module).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    module.load_state_dict(state, strict=False)
    return module
