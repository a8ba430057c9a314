"""The deployment material in infra/ and prefect.yaml, checked without docker or Kubernetes:
compose services, the GPU job template against its variables, the GPU deployments, the image
recipe, and the MLflow fail-fast check of tasks/mlflow_runs.py."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

from tasks.mlflow_runs import check_tracking_server, mlflow_run, resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
TEMPLATE = json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())
PREFECT = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT["deployments"]}
VAR = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")
PLACEHOLDER = re.compile(r"\{\{\s*([\w.$]+)\s*\}\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN")


# --- infra/compose.yaml ------------------------------------------------------------------------


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_services_all_have_healthchecks():
    services = COMPOSE["services"]
    assert {"postgres", "minio", "create-buckets", "prefect-server", "mlflow"} <= set(services)
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no healthcheck"
    checks = {name: json.dumps(s["healthcheck"]["test"]) for name, s in services.items()}
    assert "pg_isready" in checks["postgres"]
    assert "/api/health" in checks["prefect-server"]
    assert "/health" in checks["mlflow"]
    assert "mc" in checks["minio"] and "ready" in checks["minio"]


def test_compose_has_no_plaintext_secrets():
    for name, service in COMPOSE["services"].items():
        for key, value in env_of(service).items():
            if any(word in key for word in SECRET_WORDS):
                # the whole value is one ${VAR} without a default: nothing to leak here
                assert re.fullmatch(r"\$\{\w+\}", value), f"{name}.{key} is not a ${{VAR}}"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert VAR.fullmatch(password), f"{name}.{key} embeds a literal password"


def test_compose_variables_are_all_in_env_example():
    example = (INFRA / ".env.example").read_text()
    declared = set(re.findall(r"^#?\s*(\w+)=", example, re.M))
    text = json.dumps(COMPOSE)  # the parsed file: comments may mention ${VAR} freely
    needed = {m.group(1) for m in VAR.finditer(text) if not m.group(2)}
    assert needed, "compose.yaml reads no variables"
    assert needed <= declared, f"missing from .env.example: {sorted(needed - declared)}"


def test_compose_wires_postgres_s3_and_volumes():
    services = COMPOSE["services"]
    prefect_env = env_of(services["prefect-server"])
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:"
    )
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert services["prefect-server"]["command"][:3] == ["prefect", "server", "start"]

    mlflow = services["mlflow"]
    mlflow_env = env_of(mlflow)
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    cmd = mlflow["command"]
    assert cmd[:2] == ["mlflow", "server"]
    assert cmd[cmd.index("--artifacts-destination") + 1].startswith("s3://")
    assert mlflow["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"
    for dep in ("prefect-server", "mlflow"):
        assert services[dep]["depends_on"]["postgres"]["condition"] == "service_healthy"

    # one PostgreSQL, two databases: the init script is mounted and creates both
    mounts = services["postgres"]["volumes"]
    assert any(m.startswith("./postgres-init.sh:/docker-entrypoint-initdb.d/") for m in mounts)
    init = (INFRA / "postgres-init.sh").read_text()
    assert re.search(r"^create prefect ", init, re.M) and re.search(r"^create mlflow ", init, re.M)

    # data lives in named volumes, declared at the top level
    named = set(COMPOSE["volumes"])
    for name in ("postgres", "minio"):
        sources = {m.split(":")[0] for m in services[name]["volumes"]}
        assert sources & named, f"{name} keeps its data outside a named volume"
    assert (INFRA / "create_buckets.py").is_file() and (INFRA / "mlflow.Dockerfile").is_file()


# --- infra/Dockerfile --------------------------------------------------------------------------


def instructions(dockerfile: Path) -> str:
    """The Dockerfile without comments, continuation lines joined."""
    lines = [
        line.strip()
        for line in dockerfile.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return "\n".join(lines).replace("\\\n", " ")


def test_dockerfile_is_the_locked_project_on_the_locks_python_as_non_root():
    text = instructions(INFRA / "Dockerfile")
    # the Python the lock is installed and tested with; CUDA comes with the locked torch wheels
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "NVIDIA_VISIBLE_DEVICES=all" in text and "NVIDIA_DRIVER_CAPABILITIES=compute" in text
    installs = [i.strip() for i in re.findall(r"pip install [^\n&]*", text)]
    assert installs == [
        "pip install --require-hashes -r locks/requirements.txt",
        "pip install --no-deps --no-build-isolation .",
    ], installs
    assert re.search(r"^WORKDIR /app$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert (ROOT / ".dockerignore").is_file()


def test_mlflow_server_image_installs_its_lock():
    text = instructions(INFRA / "mlflow.Dockerfile")
    assert re.search(r"pip install .*--require-hashes\s+-r /tmp/mlflow-server.txt", text)
    assert "COPY locks/mlflow-server.txt" in text
    for name in ("create-buckets", "mlflow"):  # built from the repository, where the lock is
        build = COMPOSE["services"][name]["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == (
            INFRA / "mlflow.Dockerfile"
        )


# --- infra/k8s/gpu-job-template.json -----------------------------------------------------------


def placeholders(obj) -> set[str]:
    if isinstance(obj, str):
        return set(PLACEHOLDER.findall(obj))
    if isinstance(obj, dict):
        return set().union(*(placeholders(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(placeholders(v) for v in obj))
    return set()


def rendered(job_variables: dict) -> dict:
    """The job configuration a worker builds: variable defaults, then the deployment's values
    (as BaseJobConfiguration.from_template_and_values does, minus the block look-ups)."""
    from prefect.utilities.templating import apply_values

    props = TEMPLATE["variables"]["properties"]
    values = {k: p["default"] for k, p in props.items() if p.get("default") is not None}
    values.update(job_variables)
    config = json.loads(json.dumps(TEMPLATE["job_configuration"]))
    config["env"] = config["env"] | values.get("env", {})
    return apply_values(config, values)


def test_template_placeholders_match_the_declared_variables():
    config, props = TEMPLATE["job_configuration"], TEMPLATE["variables"]["properties"]
    used = placeholders(config)
    assert used <= set(props), f"undeclared: {sorted(used - set(props))}"
    # `env` is merged by Prefect into job_configuration.env rather than templated
    assert set(props) - used == {"env"}, f"declared, never used: {sorted(set(props) - used)}"
    for name in ("image", "namespace", "gpu_count", "node_selector", "tolerations"):
        assert name in props
    # the Prefect server's own check of `prefect work-pool create --base-job-template`
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=TEMPLATE)
    # the defaults are valid against their own schema
    for prop in props.values():
        if "default" in prop:
            jsonschema.validate(prop["default"], {k: v for k, v in prop.items() if k != "default"})


def test_template_manifest_is_a_job_the_kubernetes_worker_accepts():
    job = TEMPLATE["job_configuration"]["job_manifest"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"  # the worker finds its container by this name
    assert container["image"] == "{{ image }}" and container["args"] == "{{ command }}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pod["nodeSelector"] == "{{ node_selector }}"
    assert pod["tolerations"] == "{{ tolerations }}"


def test_template_renders_gpu_limit_env_and_secret_refs():
    job_vars = DEPLOYMENTS["pipeline-gpu"]["work_pool"]["job_variables"]
    jsonschema.validate({**job_vars, "image": "reg/jointdit:abc"}, TEMPLATE["variables"])
    config = rendered({**job_vars, "image": "reg/jointdit:abc", "gpu_count": 4})
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == "reg/jointdit:abc"
    assert pod["nodeSelector"] == job_vars["node_selector"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "args" not in container  # empty command: the worker fills `prefect flow-run execute`

    env = config["env"]
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/jointdit-results"
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    # unset variables drop out, so the worker's own PREFECT_API_URL is kept
    assert "PREFECT_API_URL" not in env
    assert rendered({"prefect_api_url": "http://prefect:4200/api"})["env"]["PREFECT_API_URL"]
    # S3 keys come from a Kubernetes secret, never as values in the pool
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert {r["name"] for r in refs.values()} == {"jointdit-s3"}
    assert not any("value" in e for e in container["env"])


# --- prefect.yaml ------------------------------------------------------------------------------


def test_gpu_deployments_next_to_the_local_ones():
    assert {"pipeline-local", "sample-local"} <= set(DEPLOYMENTS)
    for name, flow in (("pipeline-gpu", "pipeline"), ("sample-gpu", "sample")):
        dep = DEPLOYMENTS[name]
        assert dep["work_pool"]["name"] == "gpu"
        job_vars = dep["work_pool"]["job_variables"]
        assert {"image", "gpu_count", "node_selector"} <= set(job_vars)
        assert job_vars["gpu_count"] >= 1
        path, func = dep["entrypoint"].split(":")
        assert re.search(rf"^def {func}\(", (ROOT / path).read_text(), re.M)
        assert f'@flow(name="{flow}")' in (ROOT / path).read_text()
        # the job image holds the code at /app (infra/Dockerfile's WORKDIR)
        steps = dep["pull"]
        assert steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"


# --- MLflow fail-fast (tasks/mlflow_runs.py) ---------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    params = {"mlflow": {"tracking_uri": uri, "experiment": "x"}}
    import mlflow

    def never(*args, **kwargs):
        pytest.fail("MLflow's client was called: its own retries take minutes")

    # fast means: refused by the one health probe, before any MLflow client call
    for name in ("set_tracking_uri", "set_experiment", "start_run"):
        monkeypatch.setattr(mlflow, name, never)
    with pytest.raises(ConnectionError, match=re.escape(uri)), mlflow_run(params, "s", {}):
        pytest.fail("the run must not start")


def test_any_http_answer_counts_as_reachable():
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_server(f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        server.server_close()


def test_local_stores_need_no_server(tmp_path, monkeypatch, restore_tracking_uri):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    check_tracking_server("file:///nowhere/mlruns")
    check_tracking_server("databricks")  # not http(s): MLflow's own client handles it
    # absolute: MLflow caches a store per URI, so a relative one would reach the database of
    # an earlier test that used the same URI from another directory
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = {"mlflow": {"tracking_uri": uri, "experiment": "x"}}
    with mlflow_run(params, "stage", {"a": {"b": 1}}) as run:
        assert run.info.run_id
    assert (tmp_path / "mlflow.db").is_file()


def test_environment_tracking_uri_wins_over_params(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "http://mlflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"
