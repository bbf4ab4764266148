"""Where the real public datasets live: data/ in the repository (sources and licences in data/SOURCES.md)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"


def shared_data(name: str) -> Path:
    """Path of a real dataset shipped in data/; fails loudly when it is missing."""
    path = DATA_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: see data/SOURCES.md")
    return path
