"""Public ids: a readable prefix and 24 random hex characters (job_3f2a...)."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
