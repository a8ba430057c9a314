"""Installs come from the lock: locks/requirements.txt pins every package with its hashes, keeps
to constraints.txt, covers every dependency pyproject.toml declares, and is what this venv
holds; `make install`, CI and the images install from it and from nothing else."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "locks" / "requirements.txt"
SERVER_LOCK = ROOT / "locks" / "mlflow-server.txt"


def entries(lock: Path) -> list[tuple[Requirement, list[str]]]:
    """(requirement, its hashes) of each package line of a `uv pip compile` output."""
    text = re.sub(r"\\\n\s*", " ", lock.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            spec, *hashes = line.split(" --hash=")
            out.append((Requirement(spec), hashes))
    return out


def applicable(lock: Path) -> dict[str, str]:
    """{package: pinned version} for this interpreter and platform."""
    pins = {}
    for req, _ in entries(lock):
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_every_package_is_pinned_with_hashes():
    found = entries(LOCK)
    assert len(found) > 100
    for req, hashes in found:
        (spec,) = req.specifier
        assert spec.operator == "==", req
        assert hashes and all(h.startswith("sha256:") for h in hashes), req


def test_the_lock_keeps_to_the_constraints():
    pins = applicable(LOCK)
    assert (pins["torch"], pins["torchvision"], pins["torchaudio"]) == (
        "2.11.0",
        "0.26.0",
        "2.11.0",
    )
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(pins[canonicalize_name(req.name)]), line
    assert pins["prefect"].startswith("3.9.") and pins["fastapi"].startswith("0.150.")


def test_the_lock_covers_every_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = applicable(LOCK)
    for dep in declared:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{dep} (pyproject.toml) is not in {LOCK}: run `make lock`"
        assert req.specifier.contains(pins[name]), f"{dep}: the lock has {pins[name]}"
    assert "setuptools" in pins  # the build backend: the project installs without isolation


def test_this_environment_is_the_lock():
    mismatched = []
    for name, pinned in applicable(LOCK).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            mismatched.append(f"{name}: lock {pinned}, installed {installed}")
    assert not mismatched, f"{sys.prefix} differs from {LOCK}: {mismatched}"


def test_the_mlflow_server_runs_the_clients_mlflow():
    server, client = applicable(SERVER_LOCK), applicable(LOCK)
    assert server["mlflow"] == client["mlflow"]
    shared = set(server) & set(client)
    assert {n for n in shared if server[n] != client[n]} == set()


def test_make_and_ci_install_from_the_lock_only():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    pip_lines = [line.strip() for line in recipe.splitlines() if "$(PIP)" in line]
    assert pip_lines == [
        "$(PIP) --require-hashes -r $(LOCK)",
        "$(PIP) --no-deps --no-build-isolation -e .",
    ]
    assert "LOCK := locks/requirements.txt" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert not re.search(r"\bpip\b", ci) and "make test" in ci
