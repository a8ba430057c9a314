import pytest
import torch

from jointdit.flow import Batch, FlowConfig, flow_loss, sample_t
from jointdit.generate import SampleConfig, generate
from jointdit.guidance import Condition, GuidanceWeights, guidance_weights, guided_velocity
from jointdit.sampling import sample, sample_euler, sample_heun, timesteps
from tests.conftest import tiny_inputs


def close(actual, expected):
    # batched passes reorder float sums: equal to float32 precision, not bit for bit (and an
    # x-predicting model's velocity divides that rounding by t, down to 1/4 in tiny_inputs)
    torch.testing.assert_close(actual, expected, atol=5e-4, rtol=1e-4)


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


@pytest.mark.parametrize(("sampler", "evaluations"), [("euler", 5), ("heun", 5), ("heun", 6)])
def test_samplers_use_exactly_the_evaluations_asked_for(sampler, evaluations):
    calls = []

    def velocity(x, t):
        calls.append(t)
        return tuple(torch.zeros_like(xi) for xi in x)

    sample(sampler, velocity, (torch.ones(2),), evaluations, shift=1.0)
    assert len(calls) == evaluations


def test_heun_is_second_order():
    # dx/dt = x from t = 1 to t = 0: x(0) = x(1) / e
    def velocity(x, t):
        return tuple(x)

    x1 = (torch.ones(1, dtype=torch.float64),)
    exact = torch.exp(torch.tensor(-1.0, dtype=torch.float64))

    def error(fn, n):
        return abs(fn(velocity, x1, timesteps(n).double())[0].item() - exact.item())

    assert error(sample_heun, 8) < error(sample_euler, 16) / 10  # same 16 evaluations
    ratio = error(sample_heun, 8) / error(sample_heun, 16)
    assert 3.5 < ratio < 4.5  # halving the step quarters the error


@pytest.mark.parametrize("held", ["video", "audio"])
def test_conditional_modes_keep_the_given_modality_and_generate_the_other(tiny_model, held):
    x = tiny_inputs(b=2, t=2, h=4, w=4, length=6)
    cfg = SampleConfig(steps=3, guidance="jointcfg", seed=1)
    given = {held: x[held]}
    v, a = generate(tiny_model, x["image"], x["text"], 2, 6, cfg, **given)
    out, other = (v, a) if held == "video" else (a, v)
    assert torch.equal(out, x[held])
    # the generated modality depends on the held one (the joint attention sees it)
    changed = {held: torch.randn_like(x[held])}
    v2, a2 = generate(tiny_model, x["image"], x["text"], 2, 6, cfg, **changed)
    assert not torch.allclose(other, a2 if held == "video" else v2)


def test_a_sample_does_not_depend_on_its_batch(tiny_model):
    x = tiny_inputs(b=3, t=2, h=4, w=4, length=6)
    cfg = SampleConfig(steps=2, guidance="cfg", seed=5)
    v, a = generate(tiny_model, x["image"], x["text"], 2, 6, cfg)
    # the third sample alone, with the seed it had in the batch
    alone = SampleConfig(steps=2, guidance="cfg", seed=7)
    v2, a2 = generate(tiny_model, x["image"][2:], x["text"][2:], 2, 6, alone)
    close(v[2:], v2)
    close(a[2:], a2)
    assert not torch.allclose(v[0], v[1])  # and samples in one batch get different noise


def test_generate_refuses_both_modalities_given(tiny_model):
    x = tiny_inputs()
    with pytest.raises(ValueError, match="not both"):
        generate(
            tiny_model,
            x["image"],
            x["text"],
            3,
            10,
            SampleConfig(steps=1),
            video=x["video"],
            audio=x["audio"],
        )


def test_sample_t_holds_one_modality_at_the_configured_rate():
    g = torch.Generator().manual_seed(0)
    t_v, t_a = sample_t(20000, FlowConfig(p_hold=0.3), g)
    assert not ((t_v == 0) & (t_a == 0)).any()
    assert abs((t_v == 0).float().mean().item() - 0.15) < 0.01
    assert abs((t_a == 0).float().mean().item() - 0.15) < 0.01
    assert ((t_v > 0) & (t_v < 1)).sum() > 0


def test_a_held_modality_has_no_loss(tiny_model):
    x = tiny_inputs(b=3)
    batch = Batch(x["video"], x["audio"], x["image"], x["text"])
    g = torch.Generator().manual_seed(0)
    zero, half = torch.zeros(3), torch.full((3,), 0.5)
    _, parts = flow_loss(tiny_model, batch, zero, half, g, audio_weight=1.0)
    assert parts["loss_video"] == 0.0 and parts["loss_audio"] > 0


def test_image_embedding_is_a_context_token_dropped_with_the_image():
    import dataclasses

    from jointdit.flow import drop_conditions
    from jointdit.model.jointdit import JointDiT
    from tests.conftest import TINY, randomize

    torch.manual_seed(0)
    model = randomize(JointDiT(dataclasses.replace(TINY, image_embed_dim=5))).eval()
    x = tiny_inputs()
    emb = torch.randn(2, 5)
    with_emb = model(**x, image_embedding=emb)
    assert not torch.allclose(with_emb[0], model(**x)[0])  # the embedding conditions
    # iso mode still isolates the modalities with the extra context token
    other = model(**dict(x, audio=torch.randn_like(x["audio"])), iso=True, image_embedding=emb)
    close(other[0], model(**x, iso=True, image_embedding=emb)[0])
    # the no-image guidance pass drops the latent and the embedding together
    w = GuidanceWeights(image=2.0)
    cond = Condition(image=x["image"], text=x["text"], image_embedding=emb)
    v, _ = guided_velocity(model, x["video"], x["audio"], x["t_video"], x["t_audio"], cond, w)
    no_img = model(
        **dict(x, image=torch.zeros_like(x["image"])), image_embedding=torch.zeros_like(emb)
    )
    close(v, with_emb[0] + 2.0 * (with_emb[0] - no_img[0]))
    # condition dropout drops the embedding together with the image latent
    batch = Batch(x["video"], x["audio"], x["image"], x["text"], emb)
    dropped = drop_conditions(batch, FlowConfig(p_drop_image=1.0), torch.Generator())
    assert not dropped.image.any() and not dropped.image_embedding.any()


def test_sample_t_draws_the_audio_time_apart_at_the_configured_rate():
    g = torch.Generator().manual_seed(0)
    t_v, t_a = sample_t(20000, FlowConfig(p_hold=0.0, p_independent=0.4), g)
    apart = (t_v != t_a).float().mean().item()
    assert abs(apart - 0.4) < 0.01
    assert abs((t_a > t_v).float().mean().item() - 0.2) < 0.01  # half of them lag
    # off, the audio shares the video's time and the random stream is the one it always was
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    same_v, same_a = sample_t(100, FlowConfig(p_independent=0.0), g1)
    old = FlowConfig()
    assert torch.equal(same_v, sample_t(100, old, g2)[0])
    both = (same_v > 0) & (same_a > 0)
    assert torch.equal(same_v[both], same_a[both])


def test_a_lagging_audio_waits_at_noise_then_catches_up(tiny_model):
    x = tiny_inputs(b=2, t=2, h=4, w=4, length=6)
    seen = []

    def spy(module, args, kwargs):
        seen.append((args[2].flatten()[-1].item(), args[3][0].item()))

    handle = tiny_model.register_forward_pre_hook(spy, with_kwargs=True)
    cfg = SampleConfig(steps=4, guidance="none", audio_lag=1.0)
    _, a = generate(tiny_model, x["image"], x["text"], 2, 6, cfg)
    handle.remove()
    # video at 1, .75, .5, .25; audio at min(1, 2 t): 1, 1, 1, .5
    assert seen == [(1.0, 1.0), (0.75, 1.0), (0.5, 1.0), (0.25, 0.5)]
    assert torch.isfinite(a).all()
    in_step = generate(tiny_model, x["image"], x["text"], 2, 6, SampleConfig(steps=4))
    assert not torch.allclose(a, in_step[1])


def test_audio_lag_must_not_be_negative():
    with pytest.raises(ValueError, match="audio_lag"):
        SampleConfig(audio_lag=-0.1)
