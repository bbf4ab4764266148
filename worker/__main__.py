"""`python -m worker`: run a worker with the Settings of the environment (see worker.main)."""

from api.core.settings import get_settings
from worker.main import run_worker

run_worker(get_settings())
