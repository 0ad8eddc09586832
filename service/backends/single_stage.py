"""Single-stage backends: whole images through one model (stage "pose") -> persons."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from concurrent.futures import Future

import numpy as np

from models.card import ModelCard
from models.persons import Persons
from models.pipelines import build
from models.pipelines.base import PipelineOptions, SingleStage, with_sparse_heads
from models.registry import ModelEntry
from models.runtime import Session
from models.weights import StoredModel, WeightsStore
from service.backends.base import LoadedBackend, Prepared, await_result
from service.backends.sessions import load_sessions, run_rows, warm_up
from service.backends.variants import choose_variant
from service.config import BackendSettings, Settings
from service.engine import ItemResult, StageRunner, Ticket
from service.metrics import Metrics

__all__ = ["SingleStageBackend", "sparse_pipeline"]

logger = logging.getLogger(__name__)


class SingleStageBackend(LoadedBackend):
    """One model over whole images; the pipeline and sessions are given (tests pass fakes); see `load`."""

    def __init__(
        self,
        entry: ModelEntry,
        *,
        pipeline: SingleStage,
        sessions: Sequence[Session],
        settings: BackendSettings,
        metrics: Metrics,
        card: ModelCard | None = None,
        runtime: str = "onnxruntime",
        precision: str = "fp32",
    ) -> None:
        self.entry = entry
        self.runtime, self.precision, self.settings = runtime, precision, settings
        self.pipeline = pipeline
        self.input_side = pipeline.input_size
        self.providers = list(sessions[0].providers)
        self.card = card
        self.runner: StageRunner[Prepared, Persons, Session] = self._runner(
            "pose", settings, sessions, self._run_batch, metrics
        )
        self.runners = [self.runner]
        for size, seconds in warm_up(sessions, _blank_row(pipeline), settings.max_batch).items():
            self.runner.seed_batch_time(size, seconds)
        self.runner.start()

    @classmethod
    def load(cls, entry: ModelEntry, settings: Settings, store: WeightsStore, metrics: Metrics) -> SingleStageBackend:
        backend_settings = settings.backend(entry.backend or entry.name)
        if settings.tune_at_load:
            from service.tune import tune_if_unmeasured  # here: service.tune imports this package

            tune_if_unmeasured(store, entry.name, backend_settings)
        choice = choose_variant(store, entry.name, backend_settings)
        bs, stored = choice.settings, choice.stored
        pipeline, graph = sparse_pipeline(entry, stored, bs)
        return cls(
            entry,
            pipeline=pipeline,
            sessions=load_sessions(
                stored.path,
                bs,
                entry.name,
                spinning=True,
                runtime=choice.runtime,
                precision=choice.precision,
                row_shape=_blank_row(pipeline).shape,
                graph=graph,
                fp32_from=stored.card.fp32_from,
            ),
            settings=bs,
            metrics=metrics,
            card=stored.card,
            runtime=choice.runtime,
            precision=choice.precision,
        )

    @property
    def entry_runner(self) -> StageRunner[Prepared, Persons, Session]:
        return self.runner

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        tensor, geometry = self.pipeline.preprocess(image_rgb)
        return Prepared(tensor=tensor, geometry=geometry)

    def _run_batch(self, session: Session, items: list[Prepared]) -> tuple[list[Persons], float]:
        return run_rows(
            session, [i.tensor for i in items], lambda out, i: self.pipeline.postprocess(out, items[i].geometry)
        )

    queues_prepared = True

    def queue(
        self, prepared: Prepared, *, deadline: float, key: Hashable = None, ticket: Ticket | None = None
    ) -> Future[ItemResult[Persons]]:
        return self.runner.submit(prepared, deadline=deadline, key=key, ticket=ticket)

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None, ticket: Ticket | None = None
    ) -> ItemResult[Persons]:
        return await await_result(self.queue(prepared, deadline=deadline, key=key, ticket=ticket), wait_s)


def sparse_pipeline(
    entry: ModelEntry, stored: StoredModel, settings: BackendSettings
) -> tuple[SingleStage, bytes | None]:
    """The pipeline of `entry` for `stored`, and the graph to run in place of its file: with
    `settings.sparse_heads`, the file cut to compute the heads its decoder reads at a few cells only
    there (`models.sparse_heads`); else, or where the model has none, None (the file itself)."""
    pipeline = build.single_stage(entry, stored.card, PipelineOptions(input_size=settings.input_size))
    if not settings.sparse_heads:
        return pipeline, None
    pipeline, graph = with_sparse_heads(pipeline, stored.path)
    if graph is not None:
        logger.info("%s: the heads read at a few cells are computed there only", entry.name)
    return pipeline, graph


def _blank_row(pipeline: SingleStage) -> np.ndarray:
    """The model input of a black image of the pipeline's input size."""
    return pipeline.preprocess(np.zeros((pipeline.input_size, pipeline.input_size, 3), np.uint8))[0]
