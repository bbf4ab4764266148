"""The packages depend one way only (pyproject's [tool.importlinter] contract, also run by `make lint`):
cli > worker | migrations > api > trainer, so api/ never imports worker/, cli/ or migrations/."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_one_another_only_downward() -> None:
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0
