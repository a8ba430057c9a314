"""`jointdit sample` and the Prefect `sample` flow: without a Prefect API the CLI runs the steps
directly (no Prefect import, so no temporary Prefect server); with one it runs the flow; at both
entries every bad input gets a clear message, and the next good request is served."""

from __future__ import annotations

import json
import subprocess

import pytest

from jointdit.data.media import probe
from jointdit.sample_request import BadRequest
from tests.servers import BIN
from tests.serving_inputs import png_bytes, write_bad_files
from tests.tiny_project import TINY_CLIP

pytest_plugins = ("tests.serving_fixtures", "tests.servers")

# request fields -> a phrase of the message: every bad input of the list
PHRASES = {
    "not_an_image": "not a PNG, JPEG or WebP image",
    "truncated_png": "truncated or corrupt PNG",
    "one_pixel": "1x1 pixels is too small",
    "bomb": "decompression bomb",
}
# what `jointdit sample` of the tiny model (patch codecs, hashed text) must not import: the
# orchestration, and the heavy libraries only other codecs, encoders and stages use
UNUSED_BY_SAMPLE = ("prefect", "dvc", "uvicorn", "diffusers", "transformers", "open_clip",
                    "librosa", "great_expectations", "peft")  # fmt: skip
BAD_FIELDS = [
    ({"prompt": "la " * 34_000}, "prompt is 102,000 characters"),
    ({"steps": 0}, "steps must be between 1 and"),
    ({"steps": 10**6}, "got 1,000,000"),
    ({"guidance": "loud"}, "unknown guidance 'loud'"),
    ({"sampler": "dpm"}, "unknown sampler 'dpm'"),
    ({"model_uri": "models:/jointdit@nope"}, "alias nope not found"),
]


def cli_args(fields: dict) -> list[str]:
    return [arg for k, v in fields.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def check_outputs(paths: dict[str, str]) -> None:
    info = probe(paths["video"])
    assert info.has_audio and info.fps == TINY_CLIP["fps"]
    assert abs(info.duration_s - TINY_CLIP["duration_s"]) < 1e-6


def no_prefect_env(registered, tmp_path) -> dict[str, str]:
    env = registered.env(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPROFILEIMPORTTIME="1")
    env.pop("PREFECT_API_URL", None)
    return env


def test_cli_without_a_prefect_api_neither_imports_prefect_nor_starts_a_server(
    registered, tmp_path
):
    image = tmp_path / "drawn.png"
    image.write_bytes(png_bytes())
    cmd = [str(BIN / "jointdit"), "sample", "--image", str(image), "--steps", "2",
           "--out-dir", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=registered.root, env=no_prefect_env(registered, tmp_path),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_outputs(json.loads(proc.stdout))
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}  # fmt: skip
    assert {"tasks.sample_clip", "mlflow"} <= imported  # the profile is there...
    assert not {m for m in imported if m.split(".")[0] in UNUSED_BY_SAMPLE}
    assert not (tmp_path / "prefect-home").exists()  # ...and Prefect never came near


def test_cli_help_lists_every_guidance_preset_and_sampler(capsys):
    # read from where they are defined, so a new preset or sampler shows up without an edit here
    from flows.cli import main
    from jointdit.guidance import PRESETS
    from jointdit.sampling import SAMPLERS

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--guidance GUIDANCE {' | '.join(sorted(PRESETS))} (default: the model's)" in text
    assert f"--sampler SAMPLER {' | '.join(SAMPLERS)} (default: the model's)" in text


def test_cli_with_a_prefect_api_runs_the_sample_flow(registered, prefect_server, tmp_path):
    image = tmp_path / "drawn.png"
    image.write_bytes(png_bytes())
    cmd = [str(BIN / "jointdit"), "sample", "--image", str(image), "--steps", "2",
           "--out-dir", str(tmp_path / "out")]  # fmt: skip
    env = {**prefect_server, "MLFLOW_TRACKING_URI": registered.tracking_uri}
    proc = subprocess.run(cmd, cwd=registered.root, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_outputs(json.loads(proc.stdout))
    assert "Finished in state Completed()" in proc.stderr
    for task in ("load_model", "generate_clip", "write_outputs", "log_sample"):
        assert f"Task run '{task}-" in proc.stderr, task


def test_cli_refuses_each_bad_input_with_its_message(registered, tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.chdir(registered.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    files = write_bad_files(tmp_path / "bad")
    runs = [({"image": files[name]}, phrase) for name, phrase in PHRASES.items()]
    runs += [({"image": registered.image, **fields}, phrase) for fields, phrase in BAD_FIELDS]
    runs.append(({"image": tmp_path / "missing.png"}, "image not found"))
    for fields, phrase in runs:
        with pytest.raises(SystemExit) as stopped:
            main(["sample", *cli_args(fields), "--out-dir", str(tmp_path / "out")])
        message = str(stopped.value.code)
        assert message.startswith("jointdit sample: error: ") and phrase in message, fields
    main(["sample", "--image", str(registered.image), "--steps", "1",
          "--out-dir", str(tmp_path / "out")])  # fmt: skip
    check_outputs(json.loads(capsys.readouterr().out))


def test_sample_flow_fails_each_bad_input_with_its_message(
    registered, prefect_harness, tmp_path, monkeypatch
):
    from flows.sample import sample

    monkeypatch.chdir(registered.root)
    files = write_bad_files(tmp_path / "bad")
    runs = [({"image": str(files[name])}, phrase) for name, phrase in PHRASES.items()]
    runs += [({"image": str(registered.image), **fields}, phrase)
             for fields, phrase in BAD_FIELDS]  # fmt: skip
    for fields, phrase in runs:
        state = sample(**fields, tracking_uri=registered.tracking_uri, return_state=True)
        assert state.is_failed(), fields
        with pytest.raises((BadRequest, LookupError), match=phrase):
            state.result()
    paths = sample(image=str(registered.image), steps=1, tracking_uri=registered.tracking_uri,
                   out_dir=str(tmp_path / "out"))  # fmt: skip
    check_outputs(paths)
