from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from jointdit.metrics.i3d import I3D, I3DEmbedder, MaxPool3dSamePadding, Unit3D, i3d_input

SMALL = (2, 3, 8, 64, 64)  # enough for every stride; the standard input is 16x224x224

# A unit with BN has cin*cout*kt*kh*kw conv weights and 2*cout BN scales and shifts (running
# statistics are buffers, not parameters). An Inception module (cin; o0, o1, o2, o3, o4, o5),
# whose 3x3x3 convolutions are b1b and b2b, has
#   cin*(o0 + o1 + o3 + o5) + 27*(o1*o2 + o3*o4) + 2*(o0 + o1 + o2 + o3 + o4 + o5).
PARAMETERS = {
    "Conv3d_1a_7x7": 65_984,  # 3*64*343 + 2*64 = 65_856 + 128
    "Conv3d_2b_1x1": 4_224,  # 64*64 + 2*64 = 4_096 + 128
    "Conv3d_2c_3x3": 332_160,  # 64*192*27 + 2*192 = 331_776 + 384
    "Mixed_3b": 386_272,  # 192*208 + 27*(96*128 + 16*32) + 2*368 = 39_936 + 345_600 + 736
    "Mixed_3c": 837_888,  # 256*352 + 27*(128*192 + 32*96) + 2*640 = 90_112 + 746_496 + 1_280
    "Mixed_4b": 737_760,  # 480*368 + 27*(96*208 + 16*48) + 2*624 = 176_640 + 559_872 + 1_248
    "Mixed_4c": 904_464,  # 512*360 + 27*(112*224 + 24*64) + 2*648 = 184_320 + 718_848 + 1_296
    "Mixed_4d": 1_103_664,  # 512*344 + 27*(128*256 + 24*64) + 2*664 = 176_128 + 926_208 + 1_328
    "Mixed_4e": 1_356_672,  # 512*352 + 27*(144*288 + 32*64) + 2*704 = 180_224 + 1_175_040 + 1_408
    "Mixed_4f": 1_799_168,  # 528*576 + 27*(160*320 + 32*128) + 2*1024 = 304_128 + 1_492_992 + 2_048
    "Mixed_5b": 1_974_272,  # 832*576 + 27*(160*320 + 32*128) + 2*1024 = 479_232 + 1_492_992 + 2_048
    "Mixed_5c": 2_784_736,  # 832*752 + 27*(192*384 + 48*128) + 2*1264 = 625_664 + 2_156_544 + 2_528
    "logits": 410_000,  # 1024*400 weights + 400 biases, no BN
}
TOTAL = 12_697_264  # the sum of the above; the pools have no parameters

# (channels, T, H, W) after each stage at 16x224x224; the channels of a Mixed block are
# o0 + o2 + o4 + o5, e.g. Mixed_3b 64 + 128 + 32 + 32 = 256.
STANDARD_SHAPES = {
    "Conv3d_1a_7x7": (64, 8, 112, 112),
    "MaxPool3d_2a_3x3": (64, 8, 56, 56),
    "Conv3d_2b_1x1": (64, 8, 56, 56),
    "Conv3d_2c_3x3": (192, 8, 56, 56),
    "MaxPool3d_3a_3x3": (192, 8, 28, 28),
    "Mixed_3b": (256, 8, 28, 28),
    "Mixed_3c": (480, 8, 28, 28),
    "MaxPool3d_4a_3x3": (480, 4, 14, 14),
    "Mixed_4b": (512, 4, 14, 14),
    "Mixed_4c": (512, 4, 14, 14),
    "Mixed_4d": (512, 4, 14, 14),
    "Mixed_4e": (528, 4, 14, 14),
    "Mixed_4f": (832, 4, 14, 14),
    "MaxPool3d_5a_2x2": (832, 2, 7, 7),
    "Mixed_5b": (832, 2, 7, 7),
    "Mixed_5c": (1024, 2, 7, 7),
    "logits": (400, 1, 1, 1),
}


def _random_i3d(seed: int = 0) -> I3D:
    """I3D with seeded random weights and BN statistics, in eval mode.

    Convolutions get He-normal weights so the signal neither dies nor explodes through the ~20
    layers (with PyTorch's default init the logits change by ~1e-6 relative between a noise
    clip and a grey one); the BN
    statistics are far from their 0 / 1 defaults, so a loader that dropped them would show.
    """
    torch.manual_seed(seed)
    model = I3D()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
        model.logits.conv3d.bias.normal_()
    return model.eval()


def _video(shape: tuple[int, ...] = SMALL, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), np.uint8)


@pytest.fixture(scope="module")
def model() -> I3D:
    return _random_i3d()


@pytest.fixture(scope="module")
def weight_files(model, tmp_path_factory) -> dict[str, Path]:
    """The model's weights as the port ships them (.pt without BN step counters) and as
    safetensors (with them)."""
    directory = tmp_path_factory.mktemp("i3d")
    state = model.state_dict()
    port_style = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(port_style, directory / "rgb_imagenet.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "i3d.safetensors"))
    return {"pt": directory / "rgb_imagenet.pt", "safetensors": directory / "i3d.safetensors"}


# ---------------------------------------------------------------- network


def test_parameter_count_matches_the_hand_count(model):
    assert sum(PARAMETERS.values()) == TOTAL
    for name, child in model.named_children():
        assert sum(p.numel() for p in child.parameters()) == PARAMETERS.get(name, 0), name
    assert sum(p.numel() for p in model.parameters()) == TOTAL


def test_state_dict_keys_follow_the_pytorch_port(model):
    keys = set(model.state_dict())
    for key in (
        "Conv3d_1a_7x7.conv3d.weight",
        "Conv3d_1a_7x7.bn.weight",
        "Conv3d_1a_7x7.bn.running_mean",
        "Conv3d_1a_7x7.bn.running_var",
        "Mixed_3b.b1b.conv3d.weight",
        "Mixed_5c.b3b.conv3d.weight",
        "logits.conv3d.weight",
        "logits.conv3d.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith(("MaxPool3d", "logits.bn")) or ".b3a." in k for k in keys)
    units = [m for m in model.modules() if isinstance(m, Unit3D)]
    assert len(units) == 3 + 9 * 6 + 1
    for unit in units:
        # A bias before BN would be cancelled by the mean subtraction; the port has none.
        assert (unit.bn is None) == (unit.conv3d.bias is not None)
    assert model.logits.bn is None
    assert model.logits.conv3d.weight.shape == (400, 1024, 1, 1, 1)


def _summing(stride: int) -> Unit3D:
    """A 1x1x3 convolution with unit weights and no BN or ReLU: it sums three neighbours."""
    unit = Unit3D(1, 1, (1, 1, 3), (1, 1, stride), batch_norm=False, activation=False)
    nn.init.ones_(unit.conv3d.weight)
    return unit


def _row(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, 1, -1)


@torch.no_grad()
def test_same_padding_puts_the_odd_pixel_at_the_back():
    # n = 4 is a multiple of s = 2: pad k - s = 1, all of it at the back -> [1+2+4, 4+8+0].
    assert _summing(2)(_row(1, 2, 4, 8)).flatten().tolist() == [7, 12]
    # n = 5, s = 2: pad k - n % s = 2, one each side -> [0+1+2, 2+4+8, 8+16+0].
    assert _summing(2)(_row(1, 2, 4, 8, 16)).flatten().tolist() == [3, 14, 24]
    # s = 1: pad k - 1 = 2, one each side, and the size is kept.
    assert _summing(1)(_row(1, 2, 4, 8)).flatten().tolist() == [3, 7, 14, 12]
    # Max pooling pads the same way: windows [1, 5, 2] and [2, 4, 0].
    pool = MaxPool3dSamePadding(kernel_size=(1, 1, 3), stride=(1, 1, 2))
    assert pool(_row(1, 5, 2, 4)).flatten().tolist() == [5, 4]
    # Odd sizes round up, as TensorFlow's "SAME" does: ceil(7 / 2) = 4 in every dimension.
    conv = Unit3D(2, 3, kernel=(3, 3, 3), stride=(2, 2, 2))
    assert conv(torch.zeros(1, 2, 7, 7, 7)).shape == (1, 3, 4, 4, 4)


def test_standard_input_feature_map_sizes_and_head(model):
    shapes, maps = {}, {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape[1:])
            maps[name] = output

        return hook

    handles = [child.register_forward_hook(record(n)) for n, child in model.named_children()]
    try:
        with torch.no_grad():
            out = model(_video((1, 3, 16, 224, 224)))
            # The port's head: a fixed 2x7x7 average pool, the classifier, the mean over time.
            port = model.logits(F.avg_pool3d(maps["Mixed_5c"], (2, 7, 7), stride=1))
    finally:
        for handle in handles:
            handle.remove()
    assert shapes == STANDARD_SHAPES
    assert out.shape == (1, 400)
    torch.testing.assert_close(out, port.mean(dim=2).flatten(1), rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_clips_are_independent(model):
    x = _video()
    with torch.no_grad():
        first, second = model(x), model(x)
        alone = model(x[1:])
        grey = model(torch.zeros(SMALL))
    assert first.shape == (2, 400)
    assert torch.equal(first, second)
    # Eval-mode BN uses its stored statistics, so a clip's logits do not depend on its batch.
    torch.testing.assert_close(first[1:], alone, rtol=1e-5, atol=1e-5)
    # ... and on the clip: the random weights pass the signal on (noise is not read as grey).
    assert (first - grey).abs().max() > 0.1 * first.abs().max()


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_embedder_loads_weights_and_reproduces_the_module(model, weight_files, kind):
    embedder = I3DEmbedder(weight_files[kind], batch_size=2)
    assert not embedder.model.training
    x = _video()
    with torch.no_grad():
        assert torch.equal(embedder.model(x), model(x))


def test_embedder_refuses_weights_that_do_not_fit(model, tmp_path):
    state = model.state_dict()
    state["logits.conv3d.weight"] = torch.zeros(600, 1024, 1, 1, 1)  # a Kinetics-600 head
    state["logits.conv3d.bias"] = torch.zeros(600)
    torch.save(state, tmp_path / "kinetics600.pt")
    with pytest.raises(ValueError, match=r"kinetics600\.pt.*logits\.conv3d\.bias"):
        I3DEmbedder(tmp_path / "kinetics600.pt")
    del state["Mixed_5c.b3b.conv3d.weight"]
    save_file(state, str(tmp_path / "truncated.safetensors"))
    with pytest.raises(ValueError, match=r"truncated\.safetensors.*Mixed_5c\.b3b\.conv3d"):
        I3DEmbedder(tmp_path / "truncated.safetensors")


def test_embed_is_the_network_on_preprocessed_clips(model, weight_files):
    clips = [_clip(20, 48, 64, seed=0), _clip(16, 32, 32, seed=1)]
    embedder = I3DEmbedder(weight_files["pt"], batch_size=1)
    features = embedder.embed(clips)
    assert features.shape == (2, 400)
    assert features.dtype == np.float64
    with torch.no_grad():
        for row, clip in zip(features, clips, strict=True):
            assert np.array_equal(row, model(i3d_input(clip)[None])[0].double().numpy())
    assert embedder.embed([]).shape == (0, 400)


# ---------------------------------------------------------------- preprocessing


def test_input_scaling_and_channel_order():
    frames = np.zeros((16, 10, 6, 3), np.uint8)
    frames[..., 1] = 255
    frames[..., 2] = 51  # 51 / 127.5 - 1 = -0.6
    x = i3d_input(frames)
    assert x.shape == (3, 16, 224, 224)
    assert x.dtype == torch.float32
    # A constant image stays constant through the resize (up to float rounding of the
    # interpolation weights); 0 and 255 map to -1 and 1.
    for channel, value in enumerate([-1.0, 1.0, -0.6]):
        torch.testing.assert_close(x[channel], torch.full_like(x[0], value), rtol=0, atol=1e-6)


def test_bilinear_resize_by_hand():
    # Half-pixel centres: output column j samples input x = (j + 0.5) / 2 - 0.5, i.e. -0.25
    # (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) -> 0, 63.75, 191.25, 255.
    frames = np.zeros((16, 2, 2, 3), np.uint8)
    frames[:, :, 1] = 255
    x = i3d_input(frames, size=4)
    expected = torch.tensor([-1.0, -0.5, 0.5, 1.0]).expand(3, 16, 4, 4)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_step_image_keeps_its_outer_quarters():
    # An 8-column step (0 in columns 0-3, 255 in 4-7) stretched to 224: column j samples input
    # x = (j + 0.5) * 8 / 224 - 0.5, so j < 56 only reads columns <= 1.52 and j >= 168 only
    # reads columns >= 5.52. The step is antisymmetric about its middle, and so is its resize.
    frames = np.zeros((16, 8, 8, 3), np.uint8)
    frames[:, :, 4:] = 255
    x = i3d_input(frames)
    left, right = x[..., :56], x[..., 168:]
    torch.testing.assert_close(left, torch.full_like(left, -1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(right, torch.full_like(right, 1.0), rtol=0, atol=1e-6)
    # The interpolation weights' float rounding leaves ~1e-6 in the vertically constant image.
    torch.testing.assert_close(x, x[:, :, :1].expand_as(x), rtol=0, atol=1e-5)  # rows alike
    torch.testing.assert_close(x, -x.flip(-1), rtol=0, atol=1e-5)
    assert (x.diff(dim=-1) > -1e-5).all()


def test_only_the_first_16_frames_are_used():
    frames = np.zeros((20, 4, 4, 3), np.uint8)
    frames[:] = (np.arange(20) * 10)[:, None, None, None]  # frame t is all 10 t
    x = i3d_input(frames)
    assert x.shape == (3, 16, 224, 224)
    expected = (torch.arange(16) * 10 / 127.5 - 1).reshape(1, 16, 1, 1).expand_as(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((10, 8, 8, 3), np.uint8), "16 frames.*only 10"),
        (np.zeros((16, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((16, 8, 8), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((16, 8, 8, 4), np.uint8), r"\(T, H, W, 3\)"),
    ],
)
def test_bad_clips_are_refused(frames, message):
    with pytest.raises(ValueError, match=message):
        i3d_input(frames)
