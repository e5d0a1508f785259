"""Step metrics sent from a thread: training never waits on the tracking server.

The Trainer's callback only queues a step's numbers. A sender thread posts them to the
cycle's MLflow run in batches; when the server does not answer, the numbers stay queued and
go out once it does, in step order. An outage during training delays the curves; it does not
stop the training, which the tracking server has no part in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

BATCH = 900  # MLflow's log_batch takes at most 1000 metrics


class StepMetrics:
    """A `Sink` for `train_adapter`: `sink(metrics, step)`; `close()` when training ends."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "step_", retry_s: float = 5.0):
        self.uri, self.run_id, self.prefix, self.retry_s = tracking_uri, run_id, prefix, retry_s
        self.pending: list[Any] = []
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closing = self.stopped = False
        self.failing = False  # said once per outage
        self.thread = threading.Thread(target=self._run, name="step metrics", daemon=True)
        self.thread.start()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(self.prefix + k, float(v), now, step) for k, v in metrics.items() if v == v]
        with self.lock:
            self.pending += items
        self.wake.set()

    def close(self, timeout_s: float = 120.0, down_s: float = 15.0) -> int:
        """Send what is queued, waiting up to `timeout_s` while the server answers and
        `down_s` while it does not (the cycle's next step needs it anyway and will say so);
        returns the number unsent."""
        self.closing = True
        self.wake.set()
        self.thread.join(down_s if self.failing else timeout_s)
        self.stopped = True  # a server still down: give up, and say how much was lost
        with self.lock:
            unsent = len(self.pending)
        if unsent:
            log.warning("%d step metrics could not be sent to %s", unsent, self.run_id)
        return unsent

    def _run(self) -> None:
        while True:
            self.wake.wait(self.retry_s)
            self.wake.clear()
            sent = self._send()
            with self.lock:
                done = not self.pending
            if (self.closing and done) or self.stopped:
                return
            if not sent:
                time.sleep(self.retry_s if not self.closing else 1.0)

    def _send(self) -> bool:
        from mlflow import MlflowClient

        with self.lock:
            batch = self.pending[:BATCH]
        if not batch:
            return True
        try:
            MlflowClient(self.uri).log_batch(self.run_id, metrics=batch)
        except Exception as exc:  # any outage: keep them, say so once
            if not self.failing:
                self.failing = True
                log.warning("tracking server not answering (%s); step metrics queued", exc)
            return False
        if self.failing:
            log.info("tracking server answers again; sending the queued step metrics")
            self.failing = False
        with self.lock:
            del self.pending[: len(batch)]
        return True
