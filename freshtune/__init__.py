"""freshtune keeps a fine-tuned LLM fresh: validate, curate, retrain, evaluate, review, promote."""

import logging
import os

# Quiet and offline-friendly defaults, set before prefect or mlflow are imported (both read
# their settings at import). Users override any of them from the environment.
_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    # A cold embedded Prefect server took about 20 s on 2 cores, the default limit.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Our modules log with the standard library; show those lines in the Prefect UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,flows,freshtune",
    # The pure functions log outside flow runs too (tests, scripts); that is not an error.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "TOKENIZERS_PARALLELISM": "false",
    # MLflow's client retries a dead server 7 times with doubling waits (minutes per call);
    # preflight checks the servers first, so a call mid-cycle fails within about 15 s.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)

# Those loggers default to WARNING; the cycle's progress lines are INFO.
for _name in ("tasks", "flows", "freshtune"):
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.INFO)

# Liger warns at every import about backends for other hardware (CuTe DSL, Ascend) it skips.
logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)

__version__ = "0.1.0"
