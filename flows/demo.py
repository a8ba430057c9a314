"""`jointdit demo`: a web page to try a registered model: an image (uploaded or drawn) and a
prompt in, the video with its sound and its spectrogram out.

A small Starlette app (Starlette and uvicorn come with MLflow's and Prefect's servers) rather
than Gradio: Gradio's image components open every upload with PIL themselves, and its editor
(the drawing canvas) decodes it whole, before our code sees it, so a decompression bomb up to
PIL's own 179-megapixel ceiling would be decoded and a refusal would read "Error"; here every
image goes through the served model's own checks (jointdit.sample_request) and every refusal
shows its message. It also adds no package, sends nothing outside and loads nothing from a CDN.

Routes: GET / (the page, demo.html), GET /api/config (aliases, choices, limits),
POST /api/generate (JSON: image as base64 or a data URI, prompt, seed, steps, guidance,
sampler, alias; answers the clip as base64 MP4 and the sheet as base64 PNG, or 4xx + error).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import uvicorn
from mlflow import MlflowClient
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from jointdit.data.clip_bytes import mp4_bytes
from jointdit.guidance import PRESETS
from jointdit.sample_request import MAX_IMAGE_BASE64, MAX_PROMPT_CHARS, MAX_STEPS, BadRequest
from jointdit.sampling import SAMPLERS
from jointdit.viz import log_mel, sample_sheet
from tasks.mlflow_runs import resolve_tracking_uri
from tasks.sample_clip import DEFAULT_MODEL, generate_clip, load_model

PAGE = Path(__file__).with_name("demo.html")
MAX_BODY = MAX_IMAGE_BASE64 + 4 * MAX_PROMPT_CHARS + 4096  # the JSON around them
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
log = logging.getLogger("jointdit.demo")


class Models:
    """The demo's model and its siblings: for `models:/NAME@ALIAS`, every alias of NAME in the
    registry can be chosen; any other URI is the only choice. The last two used stay loaded."""

    def __init__(self, model_uri: str, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        match = _ALIAS_URI.match(model_uri)
        self.name = match["name"] if match else None
        self.default = match["alias"] if match else model_uri
        self.loaded: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.get(self.default)  # an unknown model stops the demo at its start, named

    def choices(self) -> list[str]:
        if self.name is None:
            return [self.default]
        aliases = MlflowClient(self.tracking_uri).get_registered_model(self.name).aliases
        return sorted(aliases, key=lambda a: (a != self.default, a))

    def uri(self, choice: str) -> str:
        return f"models:/{self.name}@{choice}" if self.name else choice

    def get(self, choice: str) -> Any:
        """The model for an alias (or the one URI); LookupError when there is none."""
        if self.name is None and choice != self.default:
            raise LookupError(f"this demo serves {self.default} only")
        with self.lock:
            if choice not in self.loaded:
                self.loaded[choice] = load_model(self.uri(choice), self.tracking_uri)
                while len(self.loaded) > 2:
                    self.loaded.pop(next(iter(self.loaded)))
            return self.loaded[choice]


def clip_answer(result: dict[str, Any], title: str) -> dict[str, Any]:
    """The model's arrays answer as the page shows it: MP4 and a sheet (frames above the
    spectrogram) as base64, with the numbers and parameters."""
    frames, audio, fps, sr = result["frames"], result["audio"], result["fps"], result["sample_rate"]
    with tempfile.TemporaryDirectory(prefix="jointdit-demo-") as tmp:
        sheet = Path(tmp) / "sheet.png"
        sample_sheet(frames, log_mel(audio, sr), len(frames) / fps, sheet, title)
        sheet_png = sheet.read_bytes()
    meta = {k: v for k, v in result.items() if k not in ("frames", "audio")}
    return {
        **meta,
        "mp4_base64": base64.b64encode(mp4_bytes(frames, audio, fps, sr)).decode("ascii"),
        "sheet_png_base64": base64.b64encode(sheet_png).decode("ascii"),
    }


def build_app(models: Models) -> Starlette:
    page = PAGE.read_text()

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def config(request: Request) -> JSONResponse:
        choices = await run_in_threadpool(models.choices)
        return JSONResponse(
            {
                "model": models.name or models.default,
                "choices": choices,
                "guidance": sorted(PRESETS),
                "samplers": list(SAMPLERS),
                "max_steps": MAX_STEPS,
                "max_prompt_chars": MAX_PROMPT_CHARS,
            }
        )

    async def generate(request: Request) -> JSONResponse:
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BODY:
            return _error(413, f"request of {declared:,} bytes; at most {MAX_BODY:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"request larger than {MAX_BODY:,} bytes")
        try:
            form = json.loads(body)
            if not isinstance(form, dict):
                raise ValueError("not an object")
        except ValueError:
            return _error(400, "the request body must be a JSON object")
        choice = str(form.pop("alias", None) or models.default)
        row = {k: v for k, v in form.items() if v not in (None, "")}
        try:
            model = await run_in_threadpool(models.get, choice)
        except LookupError as e:
            return _error(404, str(e))
        try:
            result = await run_in_threadpool(generate_clip, model, row)
            answer = await run_in_threadpool(clip_answer, result, row.get("prompt") or "")
        except BadRequest as e:
            return _error(400, str(e))
        except Exception as e:  # the page shows it; the server keeps serving
            log.exception("generate failed")
            return _error(500, f"internal error: {type(e).__name__}: {e}")
        return JSONResponse({**answer, "model_uri": models.uri(choice)})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/config", config),
            Route("/api/generate", generate, methods=["POST"]),
        ]
    )


def _error(status: int, message: str) -> JSONResponse:
    log.info("refused (%d): %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


def serve_demo(
    host: str = "127.0.0.1",
    port: int = 7860,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
) -> None:
    """Load the model (LookupError naming it when it does not exist), then serve the page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    models = Models(model_uri or DEFAULT_MODEL, tracking_uri or resolve_tracking_uri(None))
    log.info("demo: %s on http://%s:%d", models.uri(models.default), host, port)
    uvicorn.run(build_app(models), host=host, port=port, log_level="info")
