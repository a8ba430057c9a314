"""How the DiT meets the data: x-prediction and the held first frame (the image)."""

import dataclasses

import pytest
import torch

from jointdit.flow import Batch, FlowConfig, flow_loss, frame_times, holds_first_frame, noised
from jointdit.generate import SampleConfig, generate
from jointdit.model.jointdit import JointDiT, velocity_from_x0
from jointdit.training import validation_loss
from tests.conftest import TINY, tiny_inputs


def twin(model: JointDiT, **changes) -> JointDiT:
    """The same weights under another config."""
    other = JointDiT(dataclasses.replace(model.cfg, **changes)).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_x_prediction_is_the_v_heads_output_read_as_a_clean_latent(tiny_model):
    x = tiny_inputs()
    x["t_video"][0] = 0.01  # below the floor: divided by t_floor, not by t
    raw_v, raw_a = twin(tiny_model, prediction="v")(**x)
    v, a = tiny_model(**x)
    t_v = x["t_video"].clamp_min(TINY.t_floor).view(-1, 1, 1, 1, 1)
    t_a = x["t_audio"].clamp_min(TINY.t_floor).view(-1, 1, 1, 1)
    torch.testing.assert_close(v, (x["video"] - raw_v) / t_v)
    torch.testing.assert_close(a, (x["audio"] - raw_a) / t_a)


def test_an_exact_clean_prediction_gives_the_exact_velocity():
    x0, eps = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    t = torch.tensor([[0.3, 0.7, 1.0], [0.5, 0.5, 0.05]])  # per frame
    v = velocity_from_x0(x0, noised(x0, eps, t), t, t_floor=0.05)
    torch.testing.assert_close(v, eps - x0)


def test_per_frame_times_equal_to_the_clip_time_change_nothing(tiny_model):
    x = tiny_inputs(t=3)
    per_frame = x["t_video"][:, None].repeat(1, 3)
    for a, b in zip(tiny_model(**x), tiny_model(**dict(x, t_video=per_frame)), strict=True):
        # the time MLP runs on B * T rows instead of B: other matmul blocking, same values
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_each_frames_time_reaches_the_tokens_of_that_frame(tiny_model):
    x = tiny_inputs(t=3)
    x["t_video"] = x["t_video"][:, None].repeat(1, 3)
    iso = dict(iso=True, experts_only=True)  # no attention across modalities...
    base, _ = tiny_model(**x, **iso)
    moved = x["t_video"].clone()
    moved[:, 2] = 0.9
    other, _ = tiny_model(**dict(x, t_video=moved), **iso)
    # ...but attention across frames: every frame changes, frame 2 through its own modulation
    assert not torch.allclose(other[:, 2], base[:, 2])
    assert not torch.allclose(other[:, 0], base[:, 0])


def test_frame_times_hold_frame_zero_only_when_asked():
    t = torch.tensor([0.2, 0.9])
    assert torch.equal(frame_times(t, 4, hold_first=False), t)
    held = frame_times(t, 4, hold_first=True)
    assert held.shape == (2, 4)
    assert torch.equal(held[:, 0], torch.zeros(2))
    assert torch.equal(held[:, 1:], t[:, None].expand(2, 3))


def test_only_a_dit_built_to_hold_holds(tiny_model):
    assert holds_first_frame(tiny_model)
    assert not holds_first_frame(twin(tiny_model, hold_first_frame=False))


class FramePerturbed(torch.nn.Module):
    """The model, with `delta` added to its video velocity at one frame."""

    def __init__(self, inner: JointDiT, frame: int, delta: float):
        super().__init__()
        self.inner, self.cfg, self.frame, self.delta = inner, inner.cfg, frame, delta
        self.seen: torch.Tensor | None = None

    def forward(self, video, *args, **kwargs):
        self.seen = video.clone()
        v, a = self.inner(video, *args, **kwargs)
        v = v.clone()
        v[:, self.frame] += self.delta
        return v, a


def test_the_held_frame_is_given_clean_and_has_no_loss(tiny_model):
    x = tiny_inputs(b=3, t=3)
    batch = Batch(x["video"], x["audio"], x["image"], x["text"])
    t = frame_times(torch.tensor([0.3, 0.6, 0.9]), 3, hold_first=True)
    noise = (torch.randn_like(batch.video), torch.randn_like(batch.audio))

    def loss(model):
        g = torch.Generator().manual_seed(0)
        return flow_loss(model, batch, t, t[:, 1], g, 1.0, noise=noise)[1]["loss_video"]

    frame0 = FramePerturbed(tiny_model, 0, 7.0)
    assert loss(frame0) == loss(tiny_model)
    assert torch.equal(frame0.seen[:, 0], batch.video[:, 0])
    assert loss(FramePerturbed(tiny_model, 1, 7.0)) > loss(tiny_model) + 1.0


def test_validation_loss_holds_the_first_frame_of_a_holding_model(tiny_model):
    x = tiny_inputs(b=3, t=3)
    data = Batch(x["video"], x["audio"], x["image"], x["text"])
    flow = FlowConfig()
    base = validation_loss(tiny_model, data, flow)["loss_video"]
    assert validation_loss(FramePerturbed(tiny_model, 0, 7.0), data, flow)["loss_video"] == base
    free = twin(tiny_model, hold_first_frame=False)
    assert validation_loss(FramePerturbed(free, 0, 7.0), data, flow)["loss_video"] > base


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("guidance", ["none", "jointcfg"])
def test_a_samples_first_frame_is_the_image_exactly(tiny_model, sampler, shift, guidance):
    x = tiny_inputs(b=2, t=4)
    cfg = SampleConfig(steps=5, sampler=sampler, shift=shift, guidance=guidance, seed=3)
    video, _ = generate(tiny_model, x["image"], x["text"], 4, 10, cfg)
    assert torch.equal(video[:, 0], x["image"])
    assert not torch.allclose(video[:, 1], x["image"])
    # a model built without the hold generates frame 0 like any other
    free, _ = generate(twin(tiny_model, hold_first_frame=False), x["image"], x["text"], 4, 10, cfg)
    assert not torch.allclose(free[:, 0], x["image"])


def test_v2a_keeps_the_given_video_whole_with_a_held_first_frame(tiny_model):
    x = tiny_inputs(b=2, t=3)
    cfg = SampleConfig(steps=3, guidance="jointcfg")
    video, _ = generate(tiny_model, x["image"], x["text"], 3, 10, cfg, video=x["video"])
    assert torch.equal(video, x["video"])


class Oracle(torch.nn.Module):
    """A stand-in model whose clean-video estimate is `pick(image)` for every frame."""

    def __init__(self, pick):
        super().__init__()
        self.cfg = dataclasses.replace(TINY, hold_first_frame=False)
        self.pick = pick
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, video, audio, t_video, t_audio, image, *args, **kwargs):
        x0 = self.pick(image)[:, None].expand_as(video)
        return velocity_from_x0(x0, video, t_video, 0.05), torch.zeros_like(audio)


def test_condition_sensitivity_tells_a_copier_from_an_ignorer():
    from jointdit.training import condition_sensitivity

    x = tiny_inputs(b=4, t=3)
    data = Batch(x["video"], x["audio"], x["image"], x["text"])
    copier = condition_sensitivity(Oracle(lambda image: image), data)
    ignorer = condition_sensitivity(Oracle(torch.zeros_like), data)
    assert ignorer["swap"] == pytest.approx(0.0, abs=1e-6)
    other = torch.roll(torch.arange(4), 1)
    expected = (x["image"][other] - x["image"]).square().mean().sqrt().item()
    assert copier["swap"] == pytest.approx(expected, rel=1e-5)
    clips = (x["video"][other, 1:] - x["video"][:, 1:]).square().mean().sqrt().item()
    assert copier["clips"] == ignorer["clips"] == pytest.approx(clips, rel=1e-5)
    own = x["video"][:, 1:].square().mean().sqrt().item()
    assert ignorer["error"] == pytest.approx(own, rel=1e-5)


def test_signal_scaled_input_keeps_clean_frames_and_mutes_pure_noise(tiny_model):
    from jointdit.model.jointdit import signal_scaled

    x = torch.randn(2, 3, 4, 2, 2)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.25, 0.75]])
    out = signal_scaled(x, t)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[0, 2], torch.zeros_like(x[0, 2]))
    torch.testing.assert_close(out[0, 1], x[0, 1] * 0.5**0.5)
    # at t = 1 what the network computes no longer depends on the noise draw: only on the
    # conditions (its velocity still does, through x_t in (x_t - x0) / t)
    inputs = tiny_inputs()
    inputs["t_video"] = torch.ones(2)
    other = dict(inputs, video=torch.randn_like(inputs["video"]))
    x0 = inputs["video"] - tiny_model(**inputs)[0]
    x0_other = other["video"] - tiny_model(**other)[0]
    torch.testing.assert_close(x0, x0_other)
