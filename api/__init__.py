"""alignd's HTTP control plane (FastAPI): datasets, jobs, checkpoints, reward models, auth."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alignd")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
