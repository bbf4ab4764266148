"""The docker/ files, checked as far as possible without a Docker engine (none runs here)."""

import re
from pathlib import Path

import yaml

from api.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def test_compose_file_parses_and_wires_every_service_to_its_dependencies() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "minio", "minio-bucket", "api", "worker"}
    for name in ("api", "worker"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve().is_file()
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    assert services["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for volume in [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]:
        assert volume in compose["volumes"], f"volume {volume} is not declared"


def test_compose_environment_names_only_real_settings() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    fields = {f"ALIGND_{name.upper()}" for name in Settings.model_fields}
    for service in ("api", "worker"):
        env = compose["services"][service]["environment"]
        unknown = set(env) - fields
        assert not unknown, f"{service} sets unknown settings {unknown}"
        assert env["ALIGND_ENVIRONMENT"] == "production"
        # Artifacts go to the MinIO service's bucket, which the bucket job creates before api/worker start.
        assert env["ALIGND_STORAGE_URL"].startswith("s3://alignd/")
        assert env["ALIGND_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_dockerfiles_copy_only_paths_that_exist_and_pin_the_tested_torch() -> None:
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    for dockerfile in DOCKER.glob("*.Dockerfile"):
        text = dockerfile.read_text()
        for line in text.splitlines():
            if line.startswith("COPY"):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        assert f"torch=={pinned.group(1)}" in text, f"{dockerfile.name} does not install the pinned torch"
        assert re.search(r"^USER (?!root)", text, re.M), f"{dockerfile.name} runs as root"
