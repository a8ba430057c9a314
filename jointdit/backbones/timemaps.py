"""The shared flow time t in [0, 1] mapped to each pretrained backbone's own parameterisation,
and each backbone's prediction mapped back to the flow velocity eps - x0.

The flow is x_t = (1 - t) x0 + t eps. With n = sqrt((1 - t)^2 + t^2), a = (1 - t) / n and
b = t / n (a^2 + b^2 = 1), z = x_t / n = a x0 + b eps is a variance-preserving sample of
signal-to-noise ratio (a / b)^2, which is what both pretrained families take as input:

- EDM (SVD): sigma = t / (1 - t), x_sigma = x0 + sigma eps = x_t / (1 - t), network input
  c_in x_sigma with c_in = 1 / sqrt(sigma^2 + 1), so c_in x_sigma = z; time input
  c_noise = log(sigma) / 4; v-prediction read through c_skip = 1 / (sigma^2 + 1) and
  c_out = -sigma / sqrt(sigma^2 + 1): x0 = c_skip x_sigma + c_out F.
- discrete DDPM (AudioLDM): the step k whose alphas_cumprod has the SNR closest to the flow's
  (in log SNR); the input is z itself (not sqrt(alpha_bar_k) x0 + ..., which only
  approximates it), the prediction eps or v = a eps - b x0.

Written in a and b, the conversions stay finite at t = 0 and t = 1, where the EDM formulas
divide by zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """t (B,) as (B, 1, ...) against a batch-first tensor."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def vp_coefficients(t: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with z = x_t / n = a x0 + b eps, a^2 + b^2 = 1."""
    t = t.double()
    n = torch.sqrt((1 - t) ** 2 + t**2)
    return ((1 - t) / n).float(), (t / n).float()


def vp_input(x_t: Tensor, t: Tensor) -> Tensor:
    """z = x_t / sqrt((1 - t)^2 + t^2): the unit-variance-preserving network input."""
    t = _bcast(t, x_t)
    return x_t / torch.sqrt((1 - t) ** 2 + t**2)


# --- EDM (SVD) -------------------------------------------------------------------------------


def edm_sigma(t: Tensor) -> Tensor:
    """sigma = t / (1 - t) (inf at t = 1)."""
    t = t.double()
    return (t / (1 - t)).float()


def edm_c_noise(t: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """SVD's time input 0.25 log(sigma), sigma clamped to the range it was trained on (the
    flow's t = 0 and t = 1 have sigma 0 and inf)."""
    return 0.25 * torch.log(edm_sigma(t).clamp(sigma_min, sigma_max))


def edm_scalings(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(c_in, c_skip, c_out) of EDM with v-prediction and sigma_data = 1 (SVD)."""
    c_in = 1 / torch.sqrt(sigma**2 + 1)
    return c_in, 1 / (sigma**2 + 1), -sigma * c_in


def velocity_from_v(v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Flow velocity from v = a eps - b x0 (SVD's EDM v-prediction and DDPM's v are both this):
    x0 = a z - b v, eps = b z + a v, so eps - x0 = (b - a) z + (a + b) v."""
    a, b = vp_coefficients(t)
    a, b = _bcast(a, v), _bcast(b, v)
    z = vp_input(x_t, t)
    return (b - a) * z + (a + b) * v


def velocity_from_eps(eps: Tensor, x_t: Tensor, t: Tensor, a_min: float = 1e-3) -> Tensor:
    """Flow velocity from an epsilon prediction: x0 = (z - b eps) / a. Near t = 1 (a -> 0) an
    epsilon model cannot tell x0 at all; a is floored at `a_min` there."""
    a, b = vp_coefficients(t)
    a, b = _bcast(a.clamp_min(a_min), eps), _bcast(b, eps)
    x0 = (vp_input(x_t, t) - b * eps) / a
    return eps - x0


# --- discrete DDPM (AudioLDM) ----------------------------------------------------------------


@dataclass(frozen=True)
class DDPMSchedule:
    """The training noise schedule of a discrete-time backbone (diffusers scheduler config
    names). Defaults: AudioLDM's scaled_linear 0.0015..0.0195 over 1000 steps, epsilon."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("linear", "scaled_linear"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r}: linear or scaled_linear")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: epsilon or v_prediction")

    @classmethod
    def from_scheduler_config(cls, config: dict) -> DDPMSchedule:
        names = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        return cls(**{k: config[k] for k in (*names, "prediction_type") if k in config})

    def to_dict(self) -> dict:
        return asdict(self)

    def alphas_cumprod(self) -> Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        else:
            s, e = math.sqrt(self.beta_start), math.sqrt(self.beta_end)
            betas = torch.linspace(s, e, n, dtype=torch.float64) ** 2
        return torch.cumprod(1 - betas, dim=0)


def ddpm_index(t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The step k (B,) whose SNR alpha_bar / (1 - alpha_bar) is closest in log to the flow's
    ((1 - t) / t)^2; t beyond the schedule's SNR range gets its first or last step."""
    ac = alphas_cumprod.double().to(t.device)
    log_snr_k = torch.log(ac) - torch.log1p(-ac)
    t = t.double().clamp(1e-12, 1 - 1e-12)
    log_snr = 2 * (torch.log1p(-t) - torch.log(t))
    return (log_snr[:, None] - log_snr_k[None]).abs().argmin(dim=1)


def velocity_from_ddpm(pred: Tensor, x_t: Tensor, t: Tensor, prediction_type: str) -> Tensor:
    if prediction_type == "epsilon":
        return velocity_from_eps(pred, x_t, t)
    if prediction_type == "v_prediction":
        return velocity_from_v(pred, x_t, t)
    raise ValueError(f"prediction_type {prediction_type!r}: epsilon or v_prediction")
