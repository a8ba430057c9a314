"""What training and sampling need of a model, as a type: JointDiT (jointdit/model/jointdit.py)
and the joint model on pretrained backbones (jointdit/model/joint.py) both provide it, so
`flow_loss`, `guided_velocity`, `generate` and `train` serve either."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from torch import Tensor, nn


class JointModel(Protocol):
    """A torch module predicting (video, audio) velocities from noisy latents and conditions."""

    cfg: Any  # JointDiTConfig | BackboneModelConfig: latent sizes and the model's switches
    training: bool
    grad_checkpointing: bool

    def __call__(
        self,
        video: Tensor,
        audio: Tensor,
        t_video: Tensor,
        t_audio: Tensor,
        image: Tensor,
        text: Tensor | None,
        experts_only: bool | Tensor = False,
        image_embedding: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...
