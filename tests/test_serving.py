"""The registered model as users call it: in Python (pyfunc) and over HTTP through a real
`mlflow models serve` process (2 workers): image bytes in, a playable MP4 out, its explicit
signature, rows batched, and every bad input refused with a 400 naming it while the server
goes on serving."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from jointdit.data.media import probe
from tests.servers import BIN
from tests.serving_inputs import b64, bad_inputs, png_bytes
from tests.tiny_project import TINY_CLIP

pytest_plugins = ("tests.serving_fixtures",)

FRAMES = round(TINY_CLIP["duration_s"] * TINY_CLIP["fps"])


def atoms(mp4: bytes) -> list[str]:
    """The MP4's top-level boxes in file order."""
    out, at = [], 0
    while at + 8 <= len(mp4):
        size = int.from_bytes(mp4[at : at + 4], "big")
        out.append(mp4[at + 4 : at + 8].decode("latin-1"))
        at += size if size >= 8 else len(mp4)
    return out


def check_clip(mp4: bytes, path: Path) -> None:
    """H.264 yuv420p + AAC, index first, the tiny clip's size (enlarged for people by whole
    pixels), rate and length."""
    path.write_bytes(mp4)
    info = probe(path)
    assert (info.width, info.height, info.fps) == (16 * 8, 16 * 8, TINY_CLIP["fps"])
    assert info.has_audio and info.sample_rate == TINY_CLIP["sample_rate"]
    assert abs(info.duration_s - TINY_CLIP["duration_s"]) < 1e-6
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert audio.codec_context.name == "aac"
        assert sum(1 for _ in container.decode(video=0)) == FRAMES
    assert atoms(mp4).index("moov") < atoms(mp4).index("mdat")  # fast start: plays at once


@pytest.fixture
def served(registered):
    """The registered pyfunc loaded here, with a count of its generate calls."""
    model = registered.load()
    module = sys.modules[type(model.unwrap_python_model()).__module__]
    calls = []
    generate = module.generate

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])  # the batch size: first-frame latents (B, C, h, w)
        return generate(*args, **kwargs)

    module.generate = counting
    yield model, calls
    module.generate = generate


def test_the_registered_model_declares_its_signature_and_pinned_requirements(registered):
    assert "Failed to infer model signature" not in registered.register_log
    mlmodel = yaml.safe_load((registered.model_dir() / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"], c["required"]) for c in inputs] == [
        ("image", "string", True), ("prompt", "string", False), ("seed", "long", False),
        ("steps", "long", False), ("guidance", "string", False), ("sampler", "string", False),
        ("shift", "double", False),
    ]  # fmt: skip
    outputs = {c["name"]: c["type"] for c in json.loads(mlmodel["signature"]["outputs"])}
    assert outputs["mp4_base64"] == "string" and outputs["duration_s"] == "double"
    assert json.loads(mlmodel["signature"]["params"]) == [
        {"name": "output", "default": "mp4", "shape": None, "type": "string"}
    ]
    pins = (registered.model_dir() / "requirements.txt").read_text().split()
    names = {pin.split("==")[0] for pin in pins if "==" in pin}
    assert {"torch", "av", "pillow", "pandera", "mlflow", "safetensors"} <= names
    assert "torch==2.11.0" in pins


def test_an_answer_is_a_playable_mp4_with_the_parameters_used(served, tmp_path):
    model, calls = served
    request = {"image": b64(png_bytes()), "prompt": "a red ball", "seed": 3, "steps": 2}
    (answer,) = model.predict(pd.DataFrame([request]))
    check_clip(base64.b64decode(answer.pop("mp4_base64")), tmp_path / "clip.mp4")
    assert answer == {
        "prompt": "a red ball", "seed": 3, "steps": 2, "guidance": "jointcfg",
        "sampler": "euler", "shift": 1.0, "fps": 4.0, "sample_rate": 16000,
        "duration_s": 1.0, "audio_decoder": "griffin-lim",
    }  # fmt: skip
    (arrays,) = model.predict(pd.DataFrame([request]), params={"output": "arrays"})
    assert arrays["frames"].shape == (FRAMES, 16, 16, 3) and arrays["frames"].dtype == np.uint8
    assert arrays["audio"].shape == (16000,) and arrays["audio"].dtype == np.float32
    # the MP4 holds these frames, each pixel an 8x8 block: their brightness (the untrained
    # model's frames are noise at the pixel scale), H.264 at CRF 18: close
    with av.open(str(tmp_path / "clip.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])
    decoded = decoded.reshape(FRAMES, 16, 8, 16, 8).mean(axis=(2, 4))
    luma = arrays["frames"].astype(float) @ [0.299, 0.587, 0.114]
    assert np.abs(decoded - luma).mean() < 5 < luma.std()
    assert calls == [1, 1]


def test_rows_are_generated_as_one_batch_and_equal_single_rows(served):
    model, calls = served
    images = [b64(png_bytes(seed=k)) for k in range(3)]
    rows = pd.DataFrame({"image": images, "prompt": ["a ball", "", "a drum"]})
    together = model.predict(rows, params={"output": "arrays"})
    assert calls == [3]  # seeds 0, 1, 2 (unseeded rows count up): one generate call
    assert [a["seed"] for a in together] == [0, 1, 2]
    for k, answer in enumerate(together):
        alone = model.predict(rows.iloc[[k]].assign(seed=k), params={"output": "arrays"})[0]
        assert np.array_equal(alone["frames"], answer["frames"])
        assert np.array_equal(alone["audio"], answer["audio"])
    calls.clear()
    mixed = pd.DataFrame({"image": images, "steps": [2, 1, 2], "seed": [5, 5, 6]})
    model.predict(mixed)
    assert sorted(calls) == [1, 2]  # rows 0 and 2: steps 2, seeds 5 and 6; row 1 other steps
    calls.clear()
    model.predict(mixed.assign(seed=5))
    assert calls == [1, 1, 1]  # one seed for all: no two rows can share a batch


def test_bad_rows_are_refused_before_anything_is_generated(served):
    model, calls = served
    good = b64(png_bytes())
    valid = {"image": good, "prompt": "", "steps": 2, "guidance": "none", "sampler": "euler"}
    for name, (fields, phrase) in bad_inputs(good).items():
        first = {k: valid[k] for k in fields}  # the same columns, good values
        with pytest.raises(MlflowException, match=phrase) as refused:
            model.predict(pd.DataFrame([first, fields]))
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE", name
        assert "row 1: " in refused.value.message, name
    with pytest.raises(MlflowException, match="unknown output 'video'"):
        model.predict(pd.DataFrame([{"image": good}]), params={"output": "video"})
    assert calls == []


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_takes_image_bytes_and_answers_playable_clips(model_server, registered, tmp_path):
    # the second row leaves out the prompt (an integer column cannot: MLflow refuses a gap)
    rows = [{"image": b64(png_bytes(seed=1)), "prompt": "a ball", "seed": 4, "steps": 1},
            {"image": b64(png_bytes(seed=2)), "seed": 5, "steps": 2}]  # fmt: skip
    status, body = post(model_server, {"dataframe_records": rows})
    assert status == 200, body
    answers = body["predictions"]
    assert [(a["seed"], a["steps"], a["prompt"], a["duration_s"]) for a in answers] == [
        (4, 1, "a ball", 1.0),
        (5, 2, "", 1.0),
    ]
    for k, answer in enumerate(answers):
        check_clip(base64.b64decode(answer["mp4_base64"]), tmp_path / f"{k}.mp4")
    # arrays for programs that want them; a path inside the server's image root
    status, body = post(
        model_server,
        {"dataframe_split": {"columns": ["image"], "data": [[str(registered.image)]]},
         "params": {"output": "arrays"}},
    )  # fmt: skip
    assert status == 200, body
    assert np.asarray(body["predictions"][0]["frames"]).shape == (FRAMES, 16, 16, 3)


def test_http_refuses_each_bad_input_with_a_400_and_keeps_serving(model_server, tmp_path):
    good = {"image": b64(png_bytes())}
    cases = {name: (fields, phrase) for name, (fields, phrase) in bad_inputs(good["image"]).items()}
    cases["path_outside_root"] = ({"image": "/etc/passwd"}, "outside the image root")
    for name, (fields, phrase) in cases.items():
        status, body = post(model_server, {"dataframe_records": [fields]})
        assert status == 400, (name, body)
        assert body["error_code"] == "INVALID_PARAMETER_VALUE" and phrase in body["message"], name
        status, body = post(model_server, {"dataframe_records": [good]})  # the next one is served
        assert status == 200, (name, body)
    check_clip(base64.b64decode(body["predictions"][0]["mp4_base64"]), tmp_path / "last.mp4")


def test_serving_a_model_that_does_not_exist_fails_naming_it(registered):
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/jointdit@nope",
           "--env-manager", "local", "--port", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=registered.root, env=registered.env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode != 0
    assert "alias nope not found" in proc.stderr.lower(), proc.stderr[-2000:]
