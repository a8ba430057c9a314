"""LoRA adapters (peft) on a trained model: add them, train only them, merge them back.

An adapter goes on every nn.Linear and nn.Conv2d whose module name matches one of the glob
patterns (as the training stages' `trainable` patterns match parameter names). peft starts
each adapter's B at zero, so the adapted model computes exactly what the model computed;
training with `ADAPTER_PARAMETERS` as the trainable patterns changes the adapters only; merging
folds W + (alpha / rank) B A into each layer and takes the adapters out, which leaves a plain
model of the original class: it saves, loads and serves as any checkpoint does.

The adapters go in through peft's `inject_adapter_in_model`, in place, so the model keeps its
class, its config and its call (training, guidance and sampling run on it unchanged).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from jointdit.atomic import atomic_path, write_text

ADAPTER = "default"  # peft's adapter name: one adapter per model here
# the trainable patterns (jointdit.training) of an adapted model: its adapters, nothing else
ADAPTER_PARAMETERS = ("*.lora_A.*", "*.lora_B.*")
ADAPTABLE = (nn.Linear, nn.Conv2d)
WEIGHTS = "adapter_model.safetensors"  # peft's file names, so peft's own tools read them
CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = 8
    alpha: float = 8.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input, in training only
    targets: tuple[str, ...] = ("blocks.*.joint.*",)  # glob patterns over module names

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"lora: rank {self.rank} must be >= 1, alpha {self.alpha} > 0 and dropout "
                f"{self.dropout} in [0, 1)"
            )
        if not self.targets:
            raise ValueError("lora.targets: no pattern given")


def target_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """The names of the adaptable layers (nn.Linear, nn.Conv2d) the patterns match. A pattern
    that matches no such layer is an error naming it: a typo would train nothing there."""
    layers = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in layers)]
    if unmatched:
        raise ValueError(
            f"lora.targets {unmatched} match no nn.Linear / nn.Conv2d of "
            f"{type(model).__name__} (e.g. {layers[:4]})"
        )
    return [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def add_adapters(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Put a LoRA adapter (zero update) on every layer `cfg.targets` match, in place; returns
    their names."""
    from peft import LoraConfig, inject_adapter_in_model

    names = target_modules(model, cfg.targets)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # full names: peft takes a list entry as a module name or a suffix of one
        target_modules=names,
        bias="none",
    )
    inject_adapter_in_model(lora, model, adapter_name=ADAPTER)
    return names


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: peft LoRA layer} of the model's adapted layers."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (W + alpha / rank * B A) and take the adapters out, in
    place: the model is again the plain module it was, with updated weights."""
    for name, layer in adapter_layers(model).items():
        layer.merge(safe_merge=True)  # safe: a non-finite merged weight is an error
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):  # what peft attached to the model
        del model.peft_config
    return model


def save_adapters(directory: Path, model: nn.Module, cfg: AdapterConfig, meta: dict) -> None:
    """The adapters alone, in peft's layout: adapter_model.safetensors (keys
    `<layer>.lora_A.weight`, `<layer>.lora_B.weight`) and adapter_config.json (our settings,
    the adapted layers and `meta`). Written atomically (temp, then rename)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    config = {
        "peft_type": "LORA",
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(adapter_layers(model)),
        "patterns": list(cfg.targets),
        "meta": meta,
    }
    write_text(directory / CONFIG, json.dumps(config, indent=2))


def load_adapters(directory: Path, model: nn.Module) -> AdapterConfig:
    """Put the adapters saved in `directory` on `model` (the model they were trained on):
    every adapter weight must fit, none may be missing."""
    from peft import set_peft_model_state_dict

    from jointdit.weights import read_state_dict

    where = directory / CONFIG
    if not where.is_file():
        raise FileNotFoundError(f"{directory}: no adapters (missing {CONFIG})")
    saved = json.loads(where.read_text())
    cfg = AdapterConfig(
        rank=saved["r"], alpha=saved["lora_alpha"], dropout=saved["lora_dropout"],
        targets=tuple(saved["patterns"]),
    )  # fmt: skip
    add_adapters(model, cfg)
    state = read_state_dict(directory / WEIGHTS)
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{directory / WEIGHTS}: adapters do not fit {type(model).__name__} (missing "
            f"{missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return cfg


def adapter_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts: adapters, the rest, and the layers adapted."""
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    total = sum(p.numel() for p in model.parameters())
    return {"adapter": adapters, "base": total - adapters, "layers": len(adapter_layers(model))}


def config_dict(cfg: AdapterConfig) -> dict:
    return asdict(cfg)
