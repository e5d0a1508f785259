"""The entry point torchrun starts once per process: `python -m tasks.distributed JOB.json`.

`tasks.train.launch_torchrun` writes the job (base, rows, settings, parent, seed, staging, and
where the artifact store is when checkpoints are mirrored); every rank trains its share of
each global batch, and rank 0 writes the adapter, the step metrics (`steps.jsonl`) and the
run's figures (`fit.json`) into the staging folder and uploads each checkpoint.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def main(job_file: Path) -> None:
    import freshtune  # noqa: F401  (quiet defaults before prefect/mlflow load)
    from freshtune.config import TrainSettings
    from tasks.train import CheckpointMirror, fit_adapter

    job = json.loads(job_file.read_text(encoding="utf-8"))
    staging = Path(job["staging"])
    steps = staging / "steps.jsonl"

    def sink(metrics: dict[str, float], step: int) -> None:
        with steps.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "metrics": metrics}) + "\n")

    stats = fit_adapter(
        job["base_model"],
        job["rows"],
        TrainSettings.model_validate(job["settings"]),
        Path(job["parent"]) if job["parent"] else None,
        job["seed"],
        staging,
        Path(job["resume"]) if job["resume"] else None,
        sink,
        CheckpointMirror.from_job(job["mirror"]) if job.get("mirror") else None,
    )
    if _rank() == 0:
        steps.touch()
        (staging / "fit.json").write_text(json.dumps(asdict(stats)), encoding="utf-8")
    _leave_group()


def _leave_group() -> None:
    """Close the process group the Trainer opened: left to interpreter exit, gloo's threads
    were torn down mid-flight and one rank aborted ("terminate called without an active
    exception", once in six full test runs this session) after an otherwise complete run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
