from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from api.core.db import Base, utcnow
from api.core.ids import new_id


class RewardModel(Base):
    __tablename__ = "reward_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rm"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    # trainer.config.RewardComponent dicts, model refs as the client gave them (MODEL_REF).
    components: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
