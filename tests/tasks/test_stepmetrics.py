"""Step metrics wait out a tracking outage instead of stopping the training."""

import time

from mlflow import MlflowClient

from tasks.stepmetrics import StepMetrics
from tests.helpers.servers import free_port, mlflow_server, postgres_database


def test_metrics_sent_during_an_outage_arrive_once_the_server_answers(tmp_path):
    port = free_port()
    with postgres_database("stepmetrics") as database:
        backend = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
        run_id = MlflowClient(backend).create_run("0").info.run_id  # made before the outage
        sink = StepMetrics(f"http://127.0.0.1:{port}", run_id, retry_s=0.5)
        start = time.monotonic()
        for step in range(1, 21):
            sink({"loss": 1.0 / step, "learning_rate": 1e-3}, step)  # the server is down
        assert time.monotonic() - start < 0.5  # the training never waited
        time.sleep(2)  # a few failed sends
        with mlflow_server(tmp_path / "mlflow", database, port=port) as url:
            assert sink.close(timeout_s=120) == 0
            history = MlflowClient(url).get_metric_history(run_id, "step_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 21))
    assert {m.value for m in history} == {1.0 / s for s in range(1, 21)}
