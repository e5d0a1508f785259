"""The whole data gate as one dry run (`freshtune validate`): read, GX suite, curation and
drift against the workspace's snapshots. Nothing is trained, committed or quarantined."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freshtune.config import FreshtuneConfig
from freshtune.errors import DropRejected
from freshtune.files import file_digest
from tasks.curate import CurationReport, check_curated, curate, earlier_data
from tasks.ingest import stage
from tasks.snapshot import earlier_snapshots
from tasks.validate import ValidationReport, validate_records


@dataclass
class GateOutcome:
    file: str
    digest: str = ""
    validation: ValidationReport | None = None
    curation: CurationReport | None = None
    rejection: DropRejected | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.rejection is None

    def to_dict(self) -> dict[str, Any]:
        reject = self.rejection
        return {
            "file": self.file,
            "digest": self.digest,
            "passed": self.passed,
            "rejection": reject
            and {"rule": reject.rule, "line": reject.line, "detail": str(reject)},
            "validation": self.validation and asdict(self.validation),
            "curation": self.curation and json.loads(self.curation.to_json()),
            "notes": self.notes,
        }


def check_drop(path: Path, cfg: FreshtuneConfig) -> GateOutcome:
    """Every gate rule on one file; the first rejection stops it, like the flow would."""
    outcome = GateOutcome(str(path))
    if not path.is_file():
        outcome.rejection = DropRejected(path, "missing", "no such file")
        return outcome
    outcome.digest = file_digest(path)
    earlier = cfg.paths.quarantine / outcome.digest[:16]
    if earlier.exists():
        outcome.notes.append(f"these bytes were quarantined before: {earlier / 'REJECTED.md'}")
    try:
        staged = stage(path, outcome.digest, cfg)
        outcome.validation = validate_records(staged.records, path, cfg)
        if not outcome.validation.success:
            raise outcome.validation.rejection()
        history = earlier_data(earlier_snapshots(cfg, outcome.digest))
        _, outcome.curation = curate(staged.records, settings=cfg.data, earlier=history)
        check_curated(outcome.curation, path, cfg)
        if (drift := outcome.curation.drift) is not None and drift.exceeded:
            outcome.notes.append(
                f"drift above the threshold: a reviewer will be asked ({drift.summary()})"
            )
    except DropRejected as exc:
        outcome.rejection = exc
    return outcome
