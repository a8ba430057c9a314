"""Per-step metrics to MLflow that survive a tracking-server outage.

Training must not die, stall or lose metrics because the tracking server went away for a
while. Metrics are buffered and sent with `MlflowClient.log_batch` by a background thread, so
a slow or failing server never blocks a training step (MLflow's own HTTP retries can take
minutes). A failed send keeps the buffer and is retried with exponential backoff; the outage
is warned about once, and its end reported. At the end the buffer is flushed with a few more
tries, and whatever still could not be sent is written to a local JSONL file whose path is
logged, so no metric is ever dropped silently.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from jointdit.atomic import atomic_path

log = logging.getLogger("jointdit")

BATCH_LIMIT = 1000  # metrics per log_batch request (the MLflow REST API's limit)


class MetricBuffer:
    """`log(step, metrics)` now; the metrics reach run `run_id` soon, or `spill_path` at close.

    `flush_every`: steps between sends; `backoff_s`: the first wait after a failed send,
    doubled per failure up to `max_backoff_s`. Use as a context manager, or call close().
    """

    def __init__(
        self,
        run_id: str,
        spill_path: Path,
        client: Any = None,
        flush_every: int = 10,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient()
        self.run_id, self.spill_path, self.client = run_id, spill_path, client
        self.flush_every, self.backoff_s, self.max_backoff_s = flush_every, backoff_s, max_backoff_s
        self._pending: list[Any] = []
        self._lock = threading.Lock()  # `log` appends, the sender removes what it sent
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._failures = 0
        self._steps = 0
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        # stamped now: a metric sent after an outage keeps the time it was measured
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._pending.extend(Metric(k, float(v), now_ms, step) for k, v in metrics.items())
        self._steps += 1
        if self._steps % self.flush_every == 0:
            self._wake.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _send(self) -> None:
        """Send everything buffered, in chunks; raises (keeping what is unsent) on a failure."""
        while True:
            with self._lock:
                chunk = self._pending[:BATCH_LIMIT]
            if not chunk:
                return
            self.client.log_batch(self.run_id, metrics=chunk)
            with self._lock:
                del self._pending[: len(chunk)]

    def _try_send(self) -> bool:
        try:
            self._send()
        except Exception as exc:  # whatever the client raises, the metrics stay buffered
            self._failures += 1
            if self._failures == 1:
                log.warning(
                    "MLflow is unreachable (%s: %s); keeping the metrics and retrying with "
                    "backoff. Training goes on.",
                    type(exc).__name__,
                    str(exc)[:300],
                )
            return False
        if self._failures:
            log.info("MLflow is reachable again; the buffered metrics are sent")
        self._failures = 0
        return True

    def _backoff(self) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))

    def _send_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._closing.is_set():
                return
            while not self._try_send() and not self._closing.wait(self._backoff()):
                pass

    def close(self, attempts: int = 3) -> Path | None:
        """Send the rest (up to `attempts` more tries, with backoff). Returns the spill file
        written with the metrics that still could not be sent, or None when all were sent."""
        self._closing.set()
        self._wake.set()
        self._thread.join()
        for attempt in range(attempts):
            if self._try_send():
                return None
            if attempt + 1 < attempts:
                time.sleep(self._backoff())
        with self._lock:
            rows = [
                {"run_id": self.run_id, "key": m.key, "value": m.value, "step": m.step,
                 "timestamp": m.timestamp}
                for m in self._pending
            ]  # fmt: skip
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.spill_path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        log.error(
            "MLflow stayed unreachable: %d metrics of run %s could not be sent; they are in %s",
            len(rows),
            self.run_id,
            self.spill_path,
        )
        return self.spill_path
