"""Where the real public datasets live: ../shared/data beside the checkout (CI lays a copy there)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """Path of a file in ../shared/data (see its SOURCES.md); fails loudly when it is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests read real data from ../shared/data")
    return path
