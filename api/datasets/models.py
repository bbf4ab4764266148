from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from api.core.db import Base, utcnow
from api.core.ids import new_id


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(20))  # preference | prompt | sft
    format: Mapped[str] = mapped_column(String(30))  # a key of trainer.formats.FORMATS
    rows: Mapped[int]
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Deleting a dataset removes its file and hides it; the row stays while finished jobs refer to it.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class DatasetTokenLengths(Base):
    """A dataset's token lengths through one model's tokenizer, measured once by a plan (api/plan/lengths.py)
    and read by every API process since: the plan's `cached` answer and job creation's fit check.

    A dataset's content never changes under its id, so a row is never updated; deleting the dataset
    (api/datasets/service.py, or its tenant: ON DELETE CASCADE) deletes its rows."""

    __tablename__ = "dataset_lengths"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(500), primary_key=True)  # the MODEL_REF, stripped
    rows: Mapped[int]
    rows_measured: Mapped[int]
    rows_unreadable: Mapped[int]
    sampled: Mapped[bool]
    # {p50, p90, p99, max}; None: no row measured (completion_tokens: none for prompt-only data)
    prompt_tokens: Mapped[dict[str, Any] | None]
    completion_tokens: Mapped[dict[str, Any] | None]
    sequence_tokens: Mapped[dict[str, Any] | None]
    raw: Mapped[list[Any]]  # [prompt, longest completion] of every measured row
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
