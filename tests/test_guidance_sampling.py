import pytest
import torch

from jointdit.guidance import Condition, GuidanceWeights, guidance_weights, guided_velocity
from jointdit.sampling import sample_euler, timesteps
from tests.conftest import tiny_inputs


def close(actual, expected):
    # batched passes reorder float sums: equal to float32 precision, not bit for bit
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def _cond(x, negative=False):
    neg = torch.randint(1, 50, x["text"].shape) if negative else None
    return Condition(image=x["image"], text=x["text"], negative_text=neg)


def _call(model, x, w, **kw):
    return guided_velocity(
        model, x["video"], x["audio"], x["t_video"], x["t_audio"], _cond(x, **kw), w
    )


def test_zero_weights_give_the_conditional_prediction(tiny_model):
    x = tiny_inputs()
    v, a = _call(tiny_model, x, GuidanceWeights(), negative=True)
    cv, ca = tiny_model(**x)
    close(v, cv)
    close(a, ca)


def test_text_cfg_matches_the_textbook_formula(tiny_model):
    x = tiny_inputs()
    scale = 3.0
    v, a = _call(tiny_model, x, GuidanceWeights(text=scale - 1))
    cv, ca = tiny_model(**x)
    uv, ua = tiny_model(**dict(x, text=torch.zeros_like(x["text"])))
    close(v, uv + scale * (cv - uv))
    close(a, ua + scale * (ca - ua))


def test_joint_terms_apply_per_modality(tiny_model):
    x = tiny_inputs()
    v, a = _call(tiny_model, x, GuidanceWeights(video_iso=2.0, audio_iso=0.5))
    cv, ca = tiny_model(**x)
    iv, ia = tiny_model(**x, iso=True)
    close(v, cv + 2.0 * (cv - iv))
    close(a, ca + 0.5 * (ca - ia))


def test_all_terms_batched_in_one_forward(tiny_model, monkeypatch):
    x = tiny_inputs()
    cond = _cond(x, negative=True)
    calls = []
    forward = tiny_model.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "forward", counting)
    w = GuidanceWeights(video_iso=1.0, audio_iso=2.0, image=0.5, text=1.5, negative=0.25)
    v, a = guided_velocity(tiny_model, x["video"], x["audio"], x["t_video"], x["t_audio"], cond, w)
    assert calls == [5 * x["video"].shape[0]]
    c = forward(**x)
    iso = forward(**x, iso=True)
    no_img = forward(**dict(x, image=torch.zeros_like(x["image"])))
    no_txt = forward(**dict(x, text=torch.zeros_like(x["text"])))
    neg = forward(**dict(x, text=cond.negative_text))
    for m, w_iso in ((0, w.video_iso), (1, w.audio_iso)):
        expected = (
            c[m]
            + w_iso * (c[m] - iso[m])
            + w.image * (c[m] - no_img[m])
            + w.text * (c[m] - no_txt[m])
            + w.negative * (c[m] - neg[m])
        )
        close((v, a)[m], expected)


def test_presets_and_overrides():
    assert guidance_weights("none") == GuidanceWeights()
    assert guidance_weights("jointcfg", audio_iso=3.0).audio_iso == 3.0
    assert guidance_weights("cfg", text=None).text == guidance_weights("cfg").text > 0
    with pytest.raises(ValueError, match="unknown guidance preset"):
        guidance_weights("bogus")


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timesteps_run_from_noise_to_data(shift):
    ts = timesteps(10, shift)
    assert ts.shape == (11,) and ts[0] == 1.0 and ts[-1] == 0.0
    assert (ts[1:] < ts[:-1]).all()
    if shift > 1:
        assert ts[5] > timesteps(10)[5]


def test_euler_counts_evaluations_and_is_exact_for_constant_velocity():
    calls = []
    target = (torch.full((2, 3), 0.5), torch.full((4,), -1.0))

    def velocity(x, t):
        calls.append(t)
        return tuple(torch.ones_like(xi) - ti for xi, ti in zip(x, target, strict=True))

    noise = (torch.ones(2, 3), torch.ones(4))
    out = sample_euler(velocity, noise, timesteps(7, shift=2.0))
    assert len(calls) == 7
    # x_t = (1 - t) x0 + t * 1 with velocity 1 - x0 integrates exactly to x0
    for o, tgt in zip(out, target, strict=True):
        torch.testing.assert_close(o, tgt)
