"""Where the client finds its server and key when the caller gives neither: ALIGND_URL, ALIGND_API_KEY.

One typed settings object, as in the service (api/core/settings.py), read when a Client is made; the
server's other ALIGND_* variables, present on the same machine, are ignored.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGND_", extra="ignore", use_attribute_docstrings=True)

    url: str = DEFAULT_URL
    """The server's root URL (an openai-style .../v1 works too)."""
    api_key: SecretStr | None = None
    """A key made by `alignd keys create`."""
