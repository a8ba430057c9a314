"""DVC reruns what changed: each stage's `deps` in dvc.yaml and finetune/dvc.yaml cover exactly
the project modules the stage runs, i.e. the import closure of its command's module (every
`import` in those files, followed transitively, lazy ones inside functions included), so that
editing a module reruns every stage that imports it and no other.

The first test reads the code; the second edits modules in a scratch DVC project and asks
`dvc status`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("jointdit", "tasks", "flows")
# The default graph, and the optional fine-tune kept out of a bare `dvc repro` in its own file
DVC_FILES = ("dvc.yaml", "finetune/dvc.yaml")


def read_stages() -> tuple[dict[str, dict], dict[str, str]]:
    """{stage: its definition} over DVC_FILES, and {stage: the file defining it}. A stage in a
    subdirectory must run from the repository root (wdir), where its paths are read from here."""
    stages: dict[str, dict] = {}
    where: dict[str, str] = {}
    for name in DVC_FILES:
        depth = len(Path(name).parts) - 1
        for stage, spec in yaml.safe_load((REPO / name).read_text())["stages"].items():
            assert stage not in stages, f"{name}: stage {stage} is also in {where.get(stage)}"
            wdir = Path(spec.get("wdir", "."))
            assert wdir == Path(*[".."] * depth), f"{name}: stage {stage} needs wdir: the root"
            stages[stage], where[stage] = spec, name
    return stages, where


STAGES, STAGE_FILE = read_stages()
# Code a stage runs without importing it: register (and finetune, which registers through it)
# logs tasks/pyfunc_model.py as the model (MLflow loads it by path) with the whole jointdit
# package as the model's code.
SHIPPED = {
    "register": ("tasks/pyfunc_model.py", "jointdit"),
    "finetune": ("tasks/pyfunc_model.py", "jointdit"),
}


def module_file(name: str, root: Path = REPO) -> Path | None:
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_names(name: str, path: Path) -> set[str]:
    """Every project module or package `path` (module `name`) imports, anywhere in it."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package[: len(package) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            # `from pkg import name`: name may be a submodule
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n.split(".")[0] in PACKAGES}


def closure(entry: str, root: Path = REPO) -> dict[str, list[str]]:
    """{file relative to root: the import chain from `entry` to it} for every project module
    that running `entry` executes: each module imported and the packages above it."""
    chains: dict[str, list[str]] = {}
    todo = [(entry, [entry])]
    while todo:
        name, chain = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            module = ".".join(parts[:i])
            path = module_file(module, root)
            if path is None:
                continue
            rel = path.relative_to(root).as_posix()
            if rel in chains:
                continue
            here = chain if module == name else [*chain[:-1], module]
            chains[rel] = here
            todo.extend((n, [*here, n]) for n in sorted(imported_names(module, path)))
    return chains


def runs_code(path: Path) -> bool:
    """An empty package __init__.py runs nothing: editing it changes no stage's behaviour, and
    the first line written into it makes it count."""
    return path.stat().st_size > 0


def project_files(root: Path = REPO) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for package in PACKAGES
        for p in (root / package).rglob("*.py")
        if "__pycache__" not in p.parts and runs_code(p)
    )


def entry_module(stage: str) -> str:
    cmd = STAGES[stage]["cmd"]
    match = re.fullmatch(r"python -m ([\w.]+)(\s.*)?", cmd)
    assert match, (
        f"{STAGE_FILE[stage]}: stage {stage}'s cmd {cmd!r} is not `python -m <module> ...`"
    )
    return match.group(1)


def stage_uses(stage: str, root: Path = REPO) -> dict[str, str]:
    """{project file the stage runs: why}."""
    uses = {
        f: " -> ".join(chain)
        for f, chain in closure(entry_module(stage), root).items()
        if runs_code(root / f)
    }
    for shipped in SHIPPED.get(stage, ()):
        for f in project_files(root):
            if covers(shipped, f) and f not in uses:
                uses[f] = f"shipped with the registered model ({shipped})"
    return uses


def covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def code_deps(stage: str) -> list[str]:
    return [d for d in STAGES[stage].get("deps", []) if d.split("/")[0] in PACKAGES]


def test_every_stage_lists_exactly_the_modules_it_imports():
    problems = []
    for stage in STAGES:
        uses, deps, at = stage_uses(stage), code_deps(stage), STAGE_FILE[stage]
        problems += [
            f"{at}: stage {stage} lists {dep}, which does not exist"
            for dep in deps
            if not (REPO / dep).exists()
        ]
        for file, why in sorted(uses.items()):
            if not any(covers(d, file) for d in deps):
                problems.append(
                    f"{at}: stage {stage} imports {file} ({why}) but its deps do not cover it: "
                    f"add `- {file}` to stages.{stage}.deps"
                )
        for dep in deps:
            unused = [f for f in project_files() if covers(dep, f) and f not in uses]
            if unused == [dep]:
                problems.append(
                    f"{at}: stage {stage} lists {dep}, which it never imports (an edit there "
                    f"would rerun it for nothing): remove it from stages.{stage}.deps"
                )
            elif unused:
                problems.append(
                    f"{at}: stage {stage} lists {dep}, whose {', '.join(unused)} it never "
                    "imports (an edit there would rerun it for nothing): list the files of "
                    f"{dep} it imports instead"
                )
    assert not problems, "\n".join(problems)


# -- the same through DVC -------------------------------------------------------------------


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def stale_stages(root: Path) -> set[str]:
    """The stages `dvc status` finds with a changed dependency."""
    out = run([sys.executable, "-m", "dvc", "status", "--json"], root)
    status = json.loads(out or "{}")
    return {
        name.split(":")[-1]
        for name, changes in status.items()
        if any("changed deps" in change for change in changes if isinstance(change, dict))
    }


def placeholder_outputs(root: Path) -> Iterator[str]:
    """Every stage's outputs as small files, so `dvc commit` can lock the graph unrun."""
    for stage in STAGES.values():
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                path = root / (out if isinstance(out, str) else next(iter(out)))
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n" if path.suffix == ".json" else "x\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text("x\n")
                yield str(path.relative_to(root))


def test_editing_a_module_makes_dvc_status_list_exactly_the_stages_that_import_it(tmp_path):
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in (*DVC_FILES, "params.yaml", ".dvcignore"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp_path)
    assert list(placeholder_outputs(tmp_path))
    run([sys.executable, "-m", "dvc", "commit", "--force", "-q"], tmp_path)
    assert stale_stages(tmp_path) == set()

    users: dict[str, set[str]] = {}
    for stage in STAGES:
        for file in stage_uses(stage, tmp_path):
            users.setdefault(file, set()).add(stage)
    # one module of each distinct set of importing stages (an edit's outcome depends on no more)
    by_outcome: dict[frozenset[str], str] = {}
    for file in project_files(tmp_path):
        by_outcome.setdefault(frozenset(users.get(file, ())), file)
    assert len(by_outcome) >= len(STAGES) // 2, by_outcome
    for expected, file in sorted(by_outcome.items(), key=lambda kv: kv[1]):
        path = tmp_path / file
        original = path.read_bytes()
        path.write_bytes(original + b"\n# a one-line edit\n")
        try:
            assert stale_stages(tmp_path) == set(expected), f"after editing {file}"
        finally:
            path.write_bytes(original)
    assert stale_stages(tmp_path) == set()


def _path(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def test_the_pipeline_flow_runs_each_stage_after_the_stages_it_reads_from():
    from flows.pipeline import dvc_stages

    order = dvc_stages(REPO / "dvc.yaml")
    assert set(order) == {s for s, f in STAGE_FILE.items() if f == "dvc.yaml"}
    made_by = {
        _path(out): stage
        for stage in order
        for kind in ("outs", "metrics", "plots")
        for out in STAGES[stage].get(kind, [])
    }
    edges = 0
    for i, stage in enumerate(order):
        for dep in STAGES[stage].get("deps", []):
            for out, maker in made_by.items():
                if dep == out or dep.startswith(out.rstrip("/") + "/"):
                    edges += 1
                    assert order.index(maker) < i, f"{stage} reads {dep} before {maker} makes it"
    assert edges >= len(order) - 1  # a chain at least: fetch -> validate -> ... -> register
