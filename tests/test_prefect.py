"""Prefect as its users drive it, against a real `prefect server` on 127.0.0.1 started here (see
tests/servers.py): `prefect deploy --all` of prefect.yaml, `prefect deployment ls`,
`prefect deployment run ... --watch` executed by a process worker, the pipeline deployment's one
run at a time, and the UI in Debian's chromium (Playwright; nothing downloads a browser).

The deployments work in a scratch workspace holding a copy of the code, dvc.yaml and prefect.yaml
(the process pool's working directory is where `prefect deploy` ran), with a tiny registered
model and tiny synthetic data, so that nothing here touches the checkout's data or registry.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import av
import pytest
import yaml

from jointdit.data.media import display_scale, probe
from tests.servers import (
    BIN,
    REPO,
    check,
    register_cmd,
    register_env,
    start_worker,
    tiny_workspace,
)
from tests.serving_inputs import drawn_image
from tests.tiny_project import TINY_CLIP

pytest_plugins = ("tests.servers",)  # the server fixtures

PREFECT = str(BIN / "prefect")
DEPLOYMENTS = ("pipeline/pipeline-local", "sample/sample-local",
               "pipeline/pipeline-gpu", "sample/sample-gpu")  # fmt: skip
# Screenshots of the UI test, kept for people to look at (git-ignored, like all of reports/)
ARTIFACTS = REPO / "reports" / "test-artifacts" / "prefect-ui"
CHROMIUM = Path("/usr/bin/chromium")


def prefect(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 1200):
    return subprocess.run(
        [PREFECT, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def workspace(root: Path) -> Path:
    """A DVC project with the code, prefect.yaml, a registered tiny model and tiny data params."""
    ws = tiny_workspace(root)
    check(register_cmd(), "register", cwd=ws, env=register_env(f"sqlite:///{ws / 'mlflow.db'}"))
    for name in ("jointdit", "tasks", "flows"):
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "prefect.yaml", ".dvcignore"):
        shutil.copy(REPO / name, ws)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["data"]["source"] = "synthetic"  # three 1-s clips: `fetch` takes seconds
    params["data"]["synthetic"].update(num_clips=3, **TINY_CLIP)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    check([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], "dvc init", cwd=ws)
    return ws


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory) -> Iterator[tuple[dict, Path, str]]:
    """The pools, `prefect deploy --all` run in the workspace, and a worker on the local pool;
    (client environment, workspace, what deploy printed)."""
    env = {k: v for k, v in prefect_server.items() if k != "MLFLOW_TRACKING_URI"}
    ws = workspace(tmp_path_factory.mktemp("prefect") / "ws")
    for args in (
        ("work-pool", "create", "local", "--type", "process"),
        # the GPU pool as infra/README.md creates it (no cluster needed to create it)
        ("work-pool", "create", "gpu", "--type", "kubernetes",
         "--base-job-template", str(REPO / "infra/k8s/gpu-job-template.json")),
    ):  # fmt: skip
        check([PREFECT, *args], "create the work pool", env=env)
    # as from a shell in the workspace: prefect.yaml's {{ $PWD }} is the shell's variable
    deploy_env = {**env, "PWD": str(ws), "IMAGE": "registry.example.com/jointdit:test"}
    done = prefect(deploy_env, "deploy", "--all", cwd=ws)
    assert done.returncode == 0, f"prefect deploy --all exited {done.returncode}:\n" + (
        done.stdout[-4000:] + done.stderr[-4000:]
    )
    worker = start_worker(env, "local", ws.parent / "worker.log")
    try:
        yield env, ws, done.stdout
    finally:
        worker.stop()


def test_prefect_deploy_all_and_deployment_ls_exit_0(deployed):
    env, ws, deploy_out = deployed
    for name in DEPLOYMENTS:
        assert re.search(rf"Deployment '{name}' successfully created", deploy_out), deploy_out
    listed = prefect(env, "deployment", "ls")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in DEPLOYMENTS:
        assert name in listed.stdout, listed.stdout
    # the process pool runs the flows where `prefect deploy` ran ({{ $PWD }} in prefect.yaml)
    inspected = prefect(env, "deployment", "inspect", "pipeline/pipeline-local")
    assert inspected.returncode == 0, inspected.stderr
    assert f"'directory': '{ws}'" in inspected.stdout
    assert "'collision_strategy': 'ENQUEUE'" in inspected.stdout
    assert re.search(r"'global_concurrency_limit': \{[^}]*'limit': 1,", inspected.stdout)


def test_sample_deployment_run_watch_completes_and_writes_a_sounding_video(deployed, tmp_path):
    env, ws, _ = deployed
    params = {"image": str(drawn_image(tmp_path / "drawn.png")), "prompt": "a red ball",
              "seed": 2, "steps": 2, "out_dir": str(tmp_path / "outputs")}  # fmt: skip
    done = prefect(env, "deployment", "run", "sample/sample-local", "--params",
                   json.dumps(params), "--watch", "--watch-timeout", "900")  # fmt: skip
    log = (ws.parent / "worker.log").read_text(errors="replace")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log[-4000:]}"
    assert "Flow run finished successfully in 'Completed'" in done.stdout
    video = tmp_path / "outputs" / "drawn_seed2.mp4"
    with av.open(str(video)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    info = probe(video)
    assert info.has_audio and info.fps == TINY_CLIP["fps"]
    scale = display_scale(TINY_CLIP["height"], TINY_CLIP["width"])
    assert (info.width, info.height) == (TINY_CLIP["width"] * scale, TINY_CLIP["height"] * scale)


def api(env: dict[str, str], path: str, body: dict | None = None):
    """GET the Prefect API path, or POST `body` to it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def run_id(out: str) -> str:
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert found, f"no flow run id in:\n{out}"
    return found.group(1)


def test_a_second_pipeline_run_waits_for_the_first_then_runs(deployed):
    env, ws, _ = deployed
    args = ["deployment", "run", "pipeline/pipeline-local",
            "--params", json.dumps({"stages": ["fetch"], "force": True})]  # fmt: skip
    first = prefect(env, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    second = prefect(env, *args, "--watch", "--watch-timeout", "900")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = [api(env, f"/flow_runs/{run_id(p.stdout)}") for p in (first, second)]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    # whichever the worker took second was held back while the other ran, and started after
    # the other had ended
    earlier, later = sorted(runs, key=lambda r: r["start_time"])
    history = api(env, f"/flow_run_states/?flow_run_id={later['id']}")
    assert "AwaitingConcurrencySlot" in [s["name"] for s in history], history
    ended, started = (
        datetime.fromisoformat(r[k]) for r, k in ((earlier, "end_time"), (later, "start_time"))
    )
    assert started >= ended, (ended, started)
    manifest = (ws / "data/raw/manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 3 and (ws / "dvc.lock").is_file()


def test_the_ui_lists_the_deployments_and_runs_the_sample_from_its_form(deployed):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    env, ws, _ = deployed
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    image = drawn_image(ws / "drawn.png")
    name = f"from-the-ui-{uuid.uuid4().hex[:8]}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), chromium_sandbox=False)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(ui + "/deployments")
            for deployment in ("pipeline-local", "sample-local"):
                expect(page.get_by_role("link", name=deployment)).to_be_visible(timeout=60_000)
            page.screenshot(path=ARTIFACTS / "deployments.png", full_page=True)

            page.get_by_role("link", name="sample-local").click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()

            def field(label: str):
                title = page.locator(".p-label__header", has_text=re.compile(rf"^{label}\b"))
                return page.locator(".p-label").filter(has=title).locator("input, textarea")

            field("Run Name").first.fill(name)
            field("image").first.fill(str(image))
            field("prompt").first.fill("a red ball, from the UI")
            page.screenshot(path=ARTIFACTS / "run-form.png", full_page=True)
            page.get_by_role("button", name="Submit").click()
            # the run's link: in the toast, or in the deployment's list once the worker has
            # taken the run out of Scheduled (the list hides scheduled runs)
            try:
                page.get_by_role("link", name=name).first.click(timeout=120_000)
            except PlaywrightTimeout:
                # Prefect's form sometimes answers "Oops. Something went wrong" and creates
                # nothing (2 of 4 runs on the loaded machine): make the call the form makes
                page.screenshot(path=ARTIFACTS / "form-error.png", full_page=True)
                deployment = api(env, "/deployments/name/sample/sample-local")
                body = {
                    "name": name,
                    "parameters": {"image": str(image), "prompt": "a red ball, from the UI"},
                }
                run = api(env, f"/deployments/{deployment['id']}/create_flow_run", body)
                page.goto(ui + f"/runs/flow-run/{run['id']}")
            page.wait_for_url(re.compile(r".*/runs/flow-run/[0-9a-f-]{36}"))
            completed = page.locator(".state-badge.state--completed").first
            expect(completed).to_be_visible(timeout=900_000)
            # the flow's own log line, shown on the run page
            expect(page.get_by_text("sample: wrote").first).to_be_visible(timeout=60_000)
            page.screenshot(path=ARTIFACTS / "run.png", full_page=True)
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure.png", full_page=True)
            raise
        finally:
            browser.close()
    assert (ws / "outputs" / "drawn_seed0.mp4").is_file()  # out_dir left at its default
    for shot in ("deployments", "run-form", "run"):
        assert (ARTIFACTS / f"{shot}.png").stat().st_size > 10_000
    print(f"Prefect UI screenshots: {ARTIFACTS}")
