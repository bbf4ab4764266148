"""`--data-dir`, the one option every command takes, and the Settings it selects.

The CLI is the one place that writes ALIGND_DATA_DIR: it sets the variable and rebuilds Settings, so
the whole process (and any worker it starts) reads one data directory through Settings; nothing else
touches the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from api.core.settings import Settings

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory of the embedded defaults (ALIGND_DATA_DIR).", show_default=False),
]


def settings_for(data_dir: Path | None) -> Settings:
    from api.core import reset_caches
    from api.core.settings import get_settings

    if data_dir is not None:
        # A write, not a read: Settings stays the only reader, and the embedded worker this process
        # may start inherits the same data directory.
        os.environ["ALIGND_DATA_DIR"] = str(data_dir.expanduser().resolve())
    reset_caches()
    return get_settings()


def upgrade_database(settings: Settings) -> None:
    from migrations.run import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
