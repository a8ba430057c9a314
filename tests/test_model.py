import dataclasses

import pytest
import torch

from jointdit.model.jointdit import JointDiT, count_parameters
from jointdit.model.layers import dense_attention, pool_tokens
from jointdit.model.rope import apply_rope, axis_dims, rope_angles
from jointdit.training import set_trainable
from tests.conftest import TINY, randomize, tiny_inputs


@pytest.mark.parametrize(
    ("t", "h", "w", "length"), [(1, 2, 2, 2), (3, 4, 6, 10), (5, 6, 2, 7), (2, 8, 4, 1)]
)
@pytest.mark.parametrize("experts_only", [False, True])
def test_output_shapes_match_inputs(tiny_model, t, h, w, length, experts_only):
    x = tiny_inputs(t=t, h=h, w=w, length=length)
    v, a = tiny_model(**x, experts_only=experts_only)
    assert v.shape == x["video"].shape
    assert a.shape == x["audio"].shape
    assert torch.isfinite(v).all() and torch.isfinite(a).all()


def test_odd_video_size_is_a_clear_error(tiny_model):
    x = tiny_inputs(h=3)
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(**x)


def test_an_audio_patch_that_does_not_divide_the_bins_is_a_clear_error():
    with pytest.raises(ValueError, match=r"audio_patch_f \(3\) must divide the codec's 8"):
        dataclasses.replace(TINY, audio_patch_f=3)


def test_iso_mode_video_ignores_audio_and_back(tiny_model):
    x = tiny_inputs()
    v1, a1 = tiny_model(**x, iso=True)
    other = dict(x, audio=torch.randn_like(x["audio"]))
    v2, a2 = tiny_model(**other, iso=True)
    torch.testing.assert_close(v1, v2)
    assert not torch.allclose(a1, a2)
    other = dict(x, video=torch.randn_like(x["video"]))
    v3, a3 = tiny_model(**other, iso=True)
    torch.testing.assert_close(a1, a3)
    assert not torch.allclose(v1, v3)


def test_joint_mode_video_sees_audio(tiny_model):
    x = tiny_inputs()
    v1, _ = tiny_model(**x)
    v2, _ = tiny_model(**dict(x, audio=torch.randn_like(x["audio"])))
    assert not torch.allclose(v1, v2)


def test_per_sample_iso_mask_equals_separate_calls(tiny_model):
    x = tiny_inputs(b=4)
    mask = torch.tensor([True, False, False, True])
    v, a = tiny_model(**x, iso=mask)
    vj, aj = tiny_model(**x, iso=False)
    vi, ai = tiny_model(**x, iso=True)
    torch.testing.assert_close(v[mask], vi[mask])
    torch.testing.assert_close(v[~mask], vj[~mask])
    torch.testing.assert_close(a[mask], ai[mask])
    torch.testing.assert_close(a[~mask], aj[~mask])


def test_zero_initialised_joint_layers_equal_the_experts():
    torch.manual_seed(0)
    model = randomize(JointDiT(TINY))
    close_joint_gates(model)
    for sync in model.sync:  # and a fresh FrameSync: its output layer starts at zero
        torch.nn.init.zeros_(sync.out.weight)
        torch.nn.init.zeros_(sync.out.bias)
    x = tiny_inputs()
    joint = model(**x)
    experts = model(**x, experts_only=True)
    torch.testing.assert_close(joint, experts)
    # and the gates are what made them equal: opened, the outputs differ
    randomize(model.blocks[0].joint.video_modulation, seed=3)
    assert not torch.allclose(model(**x)[0], experts[0])


def close_joint_gates(model: JointDiT) -> None:
    for block in model.blocks:  # a fresh joint layer: its gates start at zero
        for mod in (block.joint.video_modulation, block.joint.audio_modulation):
            torch.nn.init.zeros_(mod[1].weight)
            torch.nn.init.zeros_(mod[1].bias)


def test_frame_sync_carries_video_to_audio_only_and_not_in_iso_mode():
    torch.manual_seed(0)
    model = randomize(JointDiT(TINY))
    close_joint_gates(model)  # FrameSync is the only path between the modalities
    x = tiny_inputs()
    v1, a1 = model(**x)
    _, a2 = model(**dict(x, video=torch.randn_like(x["video"])))
    assert not torch.allclose(a1, a2)  # the audio reads the video
    v3, _ = model(**dict(x, audio=torch.randn_like(x["audio"])))
    torch.testing.assert_close(v1, v3)  # and the video never reads the audio through it
    _, i1 = model(**x, iso=True)
    _, i2 = model(**dict(x, video=torch.randn_like(x["video"])), iso=True)
    torch.testing.assert_close(i1, i2)


def test_frame_sync_interpolates_frames_to_audio_token_times():
    cfg = dataclasses.replace(TINY, audio_patch_t=1)  # audio token k sits at k / 16 s
    sync = JointDiT(cfg).sync[0]
    weights = sync._frames_to_tokens(frames=3, tokens=12, like=torch.zeros(1))
    torch.testing.assert_close(weights.sum(0), torch.ones(12))
    # frames at 0, 0.25 and 0.5 s (4 fps): token 4 (0.25 s) is frame 1, token 2 (0.125 s) is
    # halfway between frames 0 and 1; tokens past the last frame take it alone
    torch.testing.assert_close(weights[:, 4], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(weights[:, 2], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(weights[:, 11], torch.tensor([0.0, 0.0, 1.0]))


def test_frame_sync_reaches_only_audio_near_the_frame_that_changed():
    """A frame's motion reaches the audio within the convolution's 5 frames (+ the
    interpolation's one), not across the clip."""
    cfg = dataclasses.replace(TINY, audio_patch_t=1)
    torch.manual_seed(0)
    sync = randomize(JointDiT(cfg).sync[0])
    frames, h, w, tokens = 12, 2, 2, 48  # 3 s at 4 fps; audio tokens at 16 per second
    video = torch.randn(1, frames * h * w, cfg.dim)
    shapes = ((1, frames, cfg.video_channels, 2 * h, 2 * w), (1, 1, cfg.audio_bins, tokens))
    changed = video.clone()
    changed[:, 6 * h * w : 7 * h * w] += 1.0  # frame 6 (1.5 s)
    diff = (sync(changed, *shapes) - sync(video, *shapes)).abs().amax(-1)[0]
    rows = cfg.audio_bins // cfg.audio_patch_f
    reach = diff.view(rows, tokens).amax(0) > 0
    seconds = torch.arange(tokens) / 16
    assert reach[(seconds > 1.0) & (seconds < 2.0)].all()  # frames 4..8 see frame 6
    assert not reach[(seconds <= 0.75) | (seconds >= 2.25)].any()


def test_fresh_model_joint_parts_are_identity():
    torch.manual_seed(0)
    model = JointDiT(TINY)
    for p in model.video_output.parameters():  # make the output visible, keep the gates at 0
        torch.nn.init.normal_(p)
    for block in model.blocks:
        for expert in (block.video_expert, block.audio_expert):
            randomize(expert, seed=1)
    x = tiny_inputs()
    torch.testing.assert_close(model(**x), model(**x, experts_only=True))


def test_rope_time_phase_is_shared_across_modalities():
    head_dim = 24
    vdims, adims = axis_dims(head_dim, 2), axis_dims(head_dim, 1)
    assert vdims[0] == adims[0] and sum(vdims) == sum(adims)
    # a video token at 0.5 s and an audio token at 0.5 s, different spatial / frequency positions
    angles_v = rope_angles(torch.tensor([[0.5 * 16, 3.0, 1.0]]), vdims, 1000.0)
    angles_a = rope_angles(torch.tensor([[0.5 * 16, 7.0]]), adims, 1000.0)
    n_time = vdims[0] // 2
    torch.testing.assert_close(angles_v[:, :n_time], angles_a[:, :n_time])
    assert not torch.allclose(angles_v, angles_a)


def test_rope_scores_depend_only_on_time_difference():
    dims = axis_dims(24, 1)
    q, k = torch.randn(1, 1, 1, 24), torch.randn(1, 1, 1, 24)

    def score(tq, tk):
        aq = rope_angles(torch.tensor([[tq, 2.0]]), dims, 1000.0)
        ak = rope_angles(torch.tensor([[tk, 2.0]]), dims, 1000.0)
        return (apply_rope(q, aq) * apply_rope(k, ak)).sum()

    torch.testing.assert_close(score(3.0, 1.0), score(12.0, 10.0))
    assert not torch.allclose(score(3.0, 1.0), score(3.0, 2.0))


def test_model_gives_cooccurring_video_and_audio_tokens_the_same_time_rotation():
    cfg = dataclasses.replace(TINY, audio_patch_t=1)  # audio token k sits at k / 16 s
    model = JointDiT(cfg)
    x = tiny_inputs(cfg, t=4, h=2, w=2, length=16)
    s = model.forward_input(**x)
    n_time = model.video_dims[0] // 2
    n_freq_rows = cfg.audio_bins // cfg.audio_patch_f
    # video frame 1 (0.25 s), spatial token 0; audio time index 4 (0.25 s), frequency row 1
    video_token = 1 * 1
    audio_token = 1 * 16 + 4
    assert n_freq_rows > 1
    torch.testing.assert_close(s.angles_v[video_token, :n_time], s.angles_a[audio_token, :n_time])
    assert not torch.allclose(s.angles_v[video_token, :n_time], s.angles_a[5, :n_time])


@pytest.mark.parametrize(
    ("patterns", "frozen", "expected_prefixes"),
    [
        (("blocks.*.joint.*",), (), {"blocks.0.joint", "blocks.1.joint"}),
        (("*",), ("blocks.*.joint.*", "text.*"), None),
    ],
)
def test_set_trainable_selects_exactly_the_named_parameters(patterns, frozen, expected_prefixes):
    model = JointDiT(TINY)
    names = set_trainable(model, patterns, frozen)
    x = tiny_inputs()
    loss = sum(o.square().sum() for o in randomize(model)(**x))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.requires_grad == (name in names)
        if name in names:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    if expected_prefixes is not None:
        assert {".".join(n.split(".")[:3]) for n in names} == expected_prefixes
    else:
        assert not any(".joint." in n or n.startswith("text.") for n in names)


def test_set_trainable_without_match_is_an_error():
    with pytest.raises(ValueError, match="no parameter"):
        set_trainable(JointDiT(TINY), ("nothing.*",), ())


def test_parameter_counts_add_up():
    counts = count_parameters(JointDiT(TINY))
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_pool_tokens_known_answer():
    x = torch.arange(5.0).view(1, 1, 5, 1)
    torch.testing.assert_close(pool_tokens(x, 2).flatten(), torch.tensor([0.5, 2.5, 4.0]))


@pytest.mark.parametrize("bf16", [False, True])
def test_dense_attention_equals_the_fused_kernel_forward_and_backward(bf16):
    # small CPU attentions take the dense path: it must compute what the fused kernel does
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g, requires_grad=True) for n in (24, 30, 30))
    weights = torch.randn(2, 4, 24, 16, generator=g)
    results = []
    for fn in (dense_attention, torch.nn.functional.scaled_dot_product_attention):
        dtype = torch.bfloat16 if bf16 else torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fn(*(x.to(dtype) for x in (q, k, v)))
        assert out.dtype == dtype
        (out.float() * weights).sum().backward()
        results.append((out.float(), *(x.grad.clone() for x in (q, k, v))))
        for x in (q, k, v):
            x.grad = None
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-5}
    for dense, fused, name in zip(*results, ("out", "dq", "dk", "dv"), strict=True):
        torch.testing.assert_close(dense, fused, **tol, msg=name)


def test_query_chunking_is_exact_and_kv_downsampling_approximates(tiny_model):
    x = tiny_inputs()
    reference = tiny_model(**x)
    for knobs, exact in (({"query_chunk": 5}, True), ({"kv_downsample": 2}, False)):
        model = JointDiT(dataclasses.replace(TINY, **knobs)).eval()
        model.load_state_dict(tiny_model.state_dict())
        out = model(**x)
        assert out[0].shape == reference[0].shape and out[1].shape == reference[1].shape
        if exact:
            torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        else:
            assert not torch.allclose(out[0], reference[0])


def test_gradient_checkpointing_gives_the_same_gradients():
    x = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = randomize(JointDiT(TINY)).train()
        model.grad_checkpointing = checkpointing
        sum(o.square().mean() for o in model(**x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_bf16_autocast_forward_runs_and_stays_close(tiny_model):
    x = tiny_inputs()
    reference = tiny_model(**x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(**x)
    # the network runs in bf16; the x-prediction's conversion to a velocity divides by t in
    # the precision of the float32 input, which bf16's 8 mantissa bits would lose
    assert out[0].dtype == torch.float32
    err = (out[0].float() - reference[0]).abs().mean() / reference[0].abs().mean()
    assert err < 0.05


def test_adaln_is_wired_to_each_modalitys_own_timestep(tiny_model):
    x = tiny_inputs()
    v1, a1 = tiny_model(**x, iso=True)
    # a new audio time moves the audio output only: in iso mode video never sees audio
    v2, a2 = tiny_model(**dict(x, t_audio=x["t_audio"] * 0.3), iso=True)
    torch.testing.assert_close(v1, v2)
    assert not torch.allclose(a1, a2)
    v3, a3 = tiny_model(**dict(x, t_video=x["t_video"] * 0.3), iso=True)
    torch.testing.assert_close(a1, a3)
    assert not torch.allclose(v1, v3)
