import json
import os

import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from jointdit.flow import Batch
from jointdit.model.jointdit import JointDiT, JointDiTConfig

# the real-server fixtures (plugins of the server, fault and serving tests) assert too
pytest.register_assert_rewrite("tests.servers", "tests.serving_fixtures")

# Tiny models gain nothing from threads, and spinning OpenMP threads on a busy 2-core machine
# slow every step tenfold.
torch.set_num_threads(1)

TINY = JointDiTConfig(
    video_channels=3,
    audio_channels=1,
    audio_bins=8,
    video_patch=2,
    audio_patch_f=4,
    audio_patch_t=2,
    dim=32,
    depth=2,
    heads=2,
    text_vocab=50,
    text_len=4,
    video_fps=4.0,
    audio_frame_rate=16.0,
)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so zero-initialised gates do not hide behaviour."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture
def tiny_model() -> JointDiT:
    torch.manual_seed(0)
    return randomize(JointDiT(TINY)).eval()


def tiny_inputs(
    cfg: JointDiTConfig = TINY,
    b: int = 2,
    t: int = 3,
    h: int = 4,
    w: int = 6,
    length: int = 10,
    seed: int = 0,
):
    g = torch.Generator().manual_seed(seed)
    # times away from 0: an x-predicting model's velocity divides by t, which would scale the
    # float rounding that the equality tests allow for by up to 1 / t_floor
    return dict(
        video=torch.randn(b, t, cfg.video_channels, h, w, generator=g),
        audio=torch.randn(b, cfg.audio_channels, cfg.audio_bins, length, generator=g),
        t_video=0.25 + 0.75 * torch.rand(b, generator=g),
        t_audio=0.25 + 0.75 * torch.rand(b, generator=g),
        image=torch.randn(b, cfg.video_channels, h, w, generator=g),
        text=torch.randint(1, cfg.text_vocab, (b, cfg.text_len), generator=g),
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (its first start takes ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_NAME = "jointdit-tiny-clip"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random tiny CLIP registered as a built-in architecture, and its weights on disk:
    a file for the built-in name, and a snapshot directory with open_clip_config.json."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    (root / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / f"{TINY_CLIP_NAME}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "weights.safetensors"))
    torch.save(state, root / "weights.pth")
    snapshot = root / "snapshot"
    snapshot.mkdir()
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    save_file(state, str(snapshot / "open_clip_model.safetensors"))
    return model, root


@pytest.fixture
def restore_tracking_uri():
    """mlflow_run sets the process-wide tracking URI, and MLflow copies it into
    $MLFLOW_TRACKING_URI, which wins in later stage subprocesses: restore both exactly
    (MLflow's public getter returns a resolved default, not "unset")."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, before_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before_env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before_env


def tiny_batch(n: int = 6, seed: int = 0) -> Batch:
    """A random batch of tiny latents (video 2x3x4x4, audio 1x8x6, 4 word ids)."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(n, 2, 3, 4, 4, generator=g)
    return Batch(
        video=video,
        audio=torch.randn(n, 1, 8, 6, generator=g),
        image=video[:, 0].clone(),
        text=torch.randint(1, 50, (n, 4), generator=g),
    )
