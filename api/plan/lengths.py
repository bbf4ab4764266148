"""Token lengths of a stored dataset through a base model's tokenizer, for length-aware plans.

A step's peak memory is set by its longest micro-batch, so a plan that names a dataset is made at the
longest prompt and completion the trainer will see (capped by max_prompt_length / max_length, the
trainer's truncation policy in trainer/data.py) instead of at the caps. The rows are tokenised in the
forked child that the dataset preview uses (api/core/forked.py: off the event loop, no transformers
in the API process, a deadline on a chat template nobody bounds) with the preview's own renderer, so
the counts are the trainer's. At most SAMPLE_ROWS rows are read (a seeded sample when there are more).
The result is stored in the database per (dataset id, model reference), table dataset_lengths (a
dataset's content never changes under its id), so every API process, and a restarted one, plans a job
at the same lengths; deleting the dataset deletes them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from dataclasses import replace as dataclass_replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.core import forked
from api.core.errors import AlignError, InvalidRequest
from api.core.settings import Settings
from api.datasets.models import Dataset, DatasetTokenLengths
from api.models_dir import references
from api.plan.estimate import PlanInput

SAMPLE_ROWS = 2000
"""Rows tokenised at most; more rows are sampled (SAMPLE_SEED) and the maximum is the sample's."""
SAMPLE_SEED = 0
UNCAPPED = 1 << 30
"""max_length handed to the renderer: counts before any truncation."""


class LengthsBusy(AlignError):
    status_code = 503
    code = "plan_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class LengthsTimeout(AlignError):
    status_code = 504
    code = "plan_timeout"


class DatasetUnreadable(InvalidRequest):
    code = "dataset_unreadable"


@dataclass(frozen=True)
class Percentiles:
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: list[int]) -> Percentiles:
        ordered = sorted(values)

        def rank(q: int) -> int:  # nearest rank: a length some row really has
            return ordered[max(0, -(-len(ordered) * q // 100) - 1)]

        return cls(rank(50), rank(90), rank(99), ordered[-1])


@dataclass(frozen=True)
class DatasetLengths:
    """Raw token counts (before truncation) of the rows measured; completion: the longest of a row's."""

    dataset_id: str
    model: str
    rows: int
    rows_measured: int
    rows_unreadable: int
    sampled: bool
    prompt_tokens: Percentiles | None
    completion_tokens: Percentiles | None
    """None for prompt-only data."""
    sequence_tokens: Percentiles | None
    """Prompt + longest completion of each row."""
    cached: bool = False
    raw: tuple[tuple[int, int], ...] = ()
    """(prompt, longest completion) of every measured row: the trained lengths depend on the caps."""

    def offline_lengths(self, max_length: int, max_prompt_length: int) -> tuple[int, int] | None:
        """(longest sequence, longest completion) the offline trainer sees under these caps; None: no completions."""
        if self.completion_tokens is None or not self.raw:
            return None
        longest, completion = 1, 1
        for prompt, comp in self.raw:
            kept_prompt = min(prompt, max_prompt_length)
            kept_completion = min(comp, max_length - kept_prompt)
            longest = max(longest, kept_prompt + kept_completion)
            completion = max(completion, kept_completion)
        return longest, completion

    def longest_prompt(self, max_prompt_length: int) -> int | None:
        if not self.raw:
            return None
        return max(1, min(max(p for p, _ in self.raw), max_prompt_length))


@dataclass
class LengthsTask:
    """What the child needs, as plain picklable data."""

    source: references.Source
    dataset_id: str
    storage_key: str
    rows: int
    fmt: str
    model: str


def cached(session: Session, dataset_id: str, model: str) -> DatasetLengths | None:
    """The lengths already measured for this dataset and model reference, if any (one primary-key
    SELECT, no tokenising). The caller has checked that the dataset is the tenant's."""
    row = session.get(DatasetTokenLengths, (dataset_id, model.strip()))
    return _from_row(row) if row is not None else None


async def dataset_lengths(
    session: Session, settings: Settings, tenant_id: str, dataset_id: str, model: str
) -> DatasetLengths:
    """The token lengths of the tenant's dataset through `model`'s tokenizer (404: not the tenant's):
    the stored ones (cached=True), else measured in a forked child and stored."""
    task, stored = await run_in_threadpool(_task, session, settings, tenant_id, dataset_id, model)
    if stored is not None:
        return stored
    outcome = await forked.run_in_child(_measure_here, (task, settings), settings, busy=_busy, timeout=_timeout)
    match outcome:
        case ("ok", DatasetLengths() as lengths):
            await run_in_threadpool(_store, session, lengths)
            return lengths
        case ("invalid_model", message, _):
            raise references.InvalidModelRef(message, param="base_model")
    raise DatasetUnreadable(f"the dataset's token lengths could not be measured: {outcome[-1]}", param="dataset_id")


def _task(
    session: Session, settings: Settings, tenant_id: str, dataset_id: str, model: str
) -> tuple[LengthsTask, DatasetLengths | None]:
    from api.datasets.service import get_dataset

    try:
        dataset = get_dataset(session, tenant_id, dataset_id)
        source = references.check(session, settings, tenant_id, model, "base_model")
        task = LengthsTask(source, dataset.id, dataset.storage_key, dataset.rows, dataset.format, model.strip())
        return task, cached(session, dataset.id, task.model)
    finally:
        session.close()  # tokenising takes a while; hold no connection meanwhile


def _store(session: Session, lengths: DatasetLengths) -> None:
    """Insert the measured lengths unless another request (of any API process) stored them first; nothing
    when the dataset was deleted while it was measured (its delete locks the row, as this share lock does)."""
    try:
        live = session.scalar(
            select(Dataset.id)
            .where(Dataset.id == lengths.dataset_id, Dataset.deleted_at.is_(None))
            .with_for_update(read=True)
        )
        if live is not None:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            session.execute(dialect.insert(DatasetTokenLengths).values(_to_row(lengths)).on_conflict_do_nothing())
        session.commit()
    finally:
        session.close()


def _to_row(lengths: DatasetLengths) -> dict[str, Any]:
    def percentiles(p: Percentiles | None) -> dict[str, int] | None:
        return asdict(p) if p is not None else None

    return {
        "dataset_id": lengths.dataset_id,
        "model": lengths.model,
        "rows": lengths.rows,
        "rows_measured": lengths.rows_measured,
        "rows_unreadable": lengths.rows_unreadable,
        "sampled": lengths.sampled,
        "prompt_tokens": percentiles(lengths.prompt_tokens),
        "completion_tokens": percentiles(lengths.completion_tokens),
        "sequence_tokens": percentiles(lengths.sequence_tokens),
        "raw": [list(pair) for pair in lengths.raw],
    }


def _from_row(row: DatasetTokenLengths) -> DatasetLengths:
    def percentiles(p: dict[str, Any] | None) -> Percentiles | None:
        return Percentiles(**p) if p is not None else None

    return DatasetLengths(
        dataset_id=row.dataset_id,
        model=row.model,
        rows=row.rows,
        rows_measured=row.rows_measured,
        rows_unreadable=row.rows_unreadable,
        sampled=row.sampled,
        prompt_tokens=percentiles(row.prompt_tokens),
        completion_tokens=percentiles(row.completion_tokens),
        sequence_tokens=percentiles(row.sequence_tokens),
        cached=True,
        raw=tuple((int(p), int(c)) for p, c in row.raw),
    )


def _busy(running: int) -> LengthsBusy:
    return LengthsBusy(
        f"{running} scoring, preview or planning requests are running on this server (ALIGND_MAX_CONCURRENT_SCORES); "
        "retry in a few seconds"
    )


def _timeout(seconds: float) -> LengthsTimeout:
    return LengthsTimeout(
        f"measuring the dataset's token lengths took longer than {seconds:g} s (ALIGND_SCORE_TIMEOUT_SECONDS) "
        "and was stopped; check the model's chat template, or plan without dataset_id"
    )


# --- in the child ------------------------------------------------------------------------------


def sample_offsets(rows: int, limit: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED) -> list[int]:
    """Row numbers to measure: all of them, or a seeded sample of `limit` in file order."""
    if rows <= limit:
        return list(range(rows))
    return sorted(random.Random(seed).sample(range(rows), limit))


def _measure_here(task: LengthsTask, settings: Settings) -> forked.Outcome:
    """("ok", DatasetLengths), ("invalid_model", message, param), or ("unreadable", message)."""
    from api.core.storage import storage_from_url
    from api.datasets.service import preview_rows

    storage = storage_from_url(settings.resolved_storage_url)
    try:
        tokenizer = references.load_tokenizer(task.source, settings, storage, param="base_model")
    except references.InvalidModelRef as exc:
        return ("invalid_model", exc.message, exc.param)
    stored = Dataset(id=task.dataset_id, rows=task.rows, storage_key=task.storage_key, format=task.fmt)
    offsets = sample_offsets(task.rows)
    try:
        if len(offsets) == task.rows:
            rows: list[Any] = preview_rows(storage, stored, offset=0, limit=task.rows)[0]
        else:
            rows = [row for i in offsets for row in preview_rows(storage, stored, offset=i, limit=1)[0]]
    except Exception as exc:  # a missing or corrupt file: the plan says so, never a 500
        return ("unreadable", f"{type(exc).__name__}: {exc}")
    lengths = measure_rows(tokenizer, rows, task.fmt, task.dataset_id, task.model, task.rows)
    return ("ok", lengths)


def measure_rows(
    tokenizer: Any, rows: list[Any], fmt: str, dataset_id: str, model: str, total_rows: int
) -> DatasetLengths:
    """Token counts of `rows` (of a dataset of `total_rows`) as the trainer renders them with `tokenizer`."""
    from api.datasets.preview import PreviewTask, _render_row

    render = PreviewTask(references.Source("models_dir", model), [], fmt, UNCAPPED, UNCAPPED - 1)
    raw: list[tuple[int, int]] = []
    has_completions = False
    unreadable = 0
    for row in rows:
        try:
            rendered = _render_row(tokenizer, row, render)
        except Exception:  # a chat template that fails on this row: skipped, and counted
            unreadable += 1
            continue
        if "error" in rendered:
            unreadable += 1
            continue
        tokens: dict[str, int] = rendered["tokens"]
        completions = [n for name, n in tokens.items() if name != "prompt"]
        has_completions = has_completions or bool(completions)
        raw.append((tokens["prompt"], max(completions, default=0)))
    return DatasetLengths(
        dataset_id=dataset_id,
        model=model,
        rows=total_rows,
        rows_measured=len(raw),
        rows_unreadable=unreadable,
        sampled=len(rows) < total_rows,
        prompt_tokens=Percentiles.of([p for p, _ in raw]) if raw else None,
        completion_tokens=Percentiles.of([c for _, c in raw]) if raw and has_completions else None,
        sequence_tokens=Percentiles.of([p + c for p, c in raw]) if raw else None,
        raw=tuple(raw),
    )


def at_data_lengths(algorithm: str, x: PlanInput, lengths: DatasetLengths | None) -> PlanInput:
    """`x` at the lengths the trainer will see of this dataset for `algorithm` (its longest micro-batch).

    Offline: the longest prompt + completion after truncation (trainer/data.py: the prompt cut to
    max_prompt_length, then the completion so that both fit max_length), its completion the longest kept;
    grpo/ppo: the longest prompt capped by max_prompt_length (completions are sampled: max_new_tokens).
    Unchanged without lengths, or offline on prompt-only data.
    """
    if lengths is None:
        return x
    if algorithm in ("grpo", "ppo"):
        prompt = lengths.longest_prompt(x.max_prompt_length)
        return x if prompt is None else dataclass_replace(x, max_prompt_length=prompt)
    offline = lengths.offline_lengths(x.max_length, x.max_prompt_length)
    if offline is None:
        return x
    longest, completion = offline
    return dataclass_replace(x, max_length=longest, max_prompt_length=longest - completion)
