"""A model in a Hugging Face hub cache, laid out as huggingface_hub leaves it after a download.

Tests never reach the hub (tests/conftest.py sets HF_HUB_OFFLINE), so a hub id resolves only when
the test put it in its own hub cache (`ALIGND_HUB_CACHE_DIR`) with this helper.
"""

from __future__ import annotations

from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_hub_model(cache_dir: Path, repo_id: str) -> Path:
    """Put `repo_id` in the hub cache (refs/main -> snapshots/<commit>/config.json); returns the snapshot."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    return snapshot
