"""The executor seam: work goes to its deployment's executor, which may answer or take it over."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from app.calls.policy import Attempt
from app.config_file import ConfigError
from app.settings import ModelConfig, Settings
from app.store.outcomes import Outcome
from app.upstream.client import UpstreamClient
from app.upstream.router import Router
from app.vocabulary import ExecutorKind, Status
from worker.execute import RequestRunner
from worker.executors import paths
from worker.executors.base import Work
from worker.executors.direct import DirectExecutor

CONFIG = """\
models:
  - name: big
    deployments:
      - name: gpu-a
        upstream: http://10.0.0.5:8000/v1
        executor: {executor}
"""


def settings(tmp_path: Path, executor: str = "direct") -> Settings:
    path = tmp_path / "tiergate.yaml"
    path.write_text(CONFIG.format(executor=executor))
    return Settings.from_env({"TIERGATE_CONFIG": str(path)})


def test_direct_is_the_default_and_can_be_named(tmp_path: Path) -> None:
    assert settings(tmp_path).models["big"].deployments[0].executor == ExecutorKind.DIRECT
    assert Settings.from_env({}).models["mock"].deployments[0].executor == ExecutorKind.DIRECT


def test_an_unknown_executor_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, "carrier-pigeon")
    assert "line 6" in str(caught.value) and "executor" in str(caught.value)


class Recording:
    """An executor that records what it was handed and answers as told."""

    def __init__(self, answer: Attempt | None) -> None:
        self.answer = answer
        self.seen: list[tuple[str, Work]] = []

    async def execute(self, model: ModelConfig, work: Work) -> Attempt | None:
        self.seen.append((model.name, work))
        return self.answer


def work(model: str = "big") -> Work:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return Work(
        id="req_1", attempt=1, model=model, endpoint="/v1/responses", body={}, expires_at=expires
    )


@pytest.fixture
def runner(tmp_path: Path) -> RequestRunner:
    config = settings(tmp_path)
    return RequestRunner(settings=config, upstream=UpstreamClient(), router=Router(config))


async def test_work_goes_to_the_deployments_executor(runner: RequestRunner) -> None:
    executor, _ = runner.routed(runner.settings.models["big"], work())
    assert isinstance(executor, DirectExecutor)
    done = Attempt(Outcome(status=Status.COMPLETED, response_status=200))
    recording = Recording(done)
    runner.executors[ExecutorKind.DIRECT] = recording
    handed = work()
    answered = await runner.attempt(handed)
    # its executor's answer, tagged with the path it ran on (the metrics' executor label)
    assert answered is not None and answered.outcome is done.outcome
    assert answered.path == ExecutorKind.DIRECT
    assert recording.seen == [("big", handed)]


async def test_an_executor_may_take_work_over(runner: RequestRunner) -> None:
    runner.executors[ExecutorKind.DIRECT] = Recording(None)
    assert await runner.attempt(work()) is None


async def test_a_model_no_longer_configured_fails_without_an_executor(
    runner: RequestRunner,
) -> None:
    recording = Recording(None)
    runner.executors[ExecutorKind.DIRECT] = recording
    result = await runner.attempt(work("gone"))
    assert result is not None and result.outcome is not None
    assert result.outcome.status == Status.FAILED and recording.seen == []


FLEET = """\
models:
  - name: big
    deployments:
      - name: own
        upstream: http://10.0.0.5:8000/v1
      - name: openai
        upstream: https://api.openai.com/v1
        executor: batch
        batch: {turnaround_s: 3600, margin_s: 600}
        flex: {timeout_s: 900}
      - name: flexible
        upstream: https://api.openai.com/v1
        executor: flex
"""


def fleet(tmp_path: Path) -> ModelConfig:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    return Settings.from_env({"TIERGATE_CONFIG": str(path)}).models["big"]


@pytest.mark.parametrize(
    ("left_s", "endpoint", "pin", "expected"),
    [
        (86_400, "/v1/responses", None, paths.Path(ExecutorKind.BATCH, "openai")),
        (4_200, "/v1/chat/completions", None, paths.Path(ExecutorKind.BATCH, "openai")),
        # too short for turnaround + margin: the batch deployment's flex fallback
        (4_100, "/v1/responses", None, paths.Path(ExecutorKind.FLEX, "openai")),
        (901, "/v1/responses", None, paths.Path(ExecutorKind.FLEX, "openai")),
        # not even one flex call fits: a realtime call, routed as usual
        (899, "/v1/responses", None, paths.Path(ExecutorKind.DIRECT, None)),
        (86_400, "/v1/embeddings", None, paths.Path(ExecutorKind.DIRECT, None)),
        # a pin keeps its deployment
        (86_400, "/v1/responses", "own", paths.Path(ExecutorKind.DIRECT, "own")),
        (86_400, "/v1/responses", "flexible", paths.Path(ExecutorKind.FLEX, "flexible")),
    ],
)
def test_a_row_takes_the_cheapest_path_that_fits_its_window(
    tmp_path: Path, left_s: int, endpoint: str, pin: str | None, expected: paths.Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    found = paths.choose(fleet(tmp_path), endpoint, pin, now + dt.timedelta(seconds=left_s), now)
    assert found == expected


def test_anthropic_batches_fall_back_to_direct(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        "models:\n  - name: claude\n    deployments:\n      - name: a\n"
        "        upstream: https://api.anthropic.com/v1\n        executor: batch\n"
        "        batch: {api: anthropic}\n"
    )
    model = Settings.from_env({"TIERGATE_CONFIG": str(path)}).models["claude"]
    assert model.deployments[0].batch.fallback == ExecutorKind.DIRECT
    now = dt.datetime.now(dt.UTC)
    short = paths.choose(model, "/v1/responses", None, now + dt.timedelta(minutes=30), now)
    assert short == paths.Path(ExecutorKind.DIRECT, None)


def test_a_batch_fallback_cannot_be_batch(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(
        "models:\n  - name: m\n    deployments:\n      - name: a\n"
        "        upstream: https://api.openai.com/v1\n        executor: batch\n"
        "        batch: {fallback: batch}\n"
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TIERGATE_CONFIG": str(path)})
    assert "line 7" in str(caught.value) and "fallback" in str(caught.value)
