"""The deployment files are checked, not just present: the Kubernetes base and the compose
file parse, point at what exists, and agree with the broker's own settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from broker.config import load_settings
from broker.config_env import apply_env

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def broker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "broker"]
    return found


def test_the_kustomization_names_files_that_exist_and_generates_what_the_pod_mounts() -> None:
    kustomization = documents(KUBE / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (KUBE / resource).is_file(), resource
    generated = {g["name"] for g in kustomization["configMapGenerator"] + kustomization["secretGenerator"]}
    for generator in kustomization["configMapGenerator"] + kustomization["secretGenerator"]:
        for entry in generator["files"]:
            assert (KUBE / entry.split("=", 1)[-1]).is_file(), entry
    [deployment] = documents(KUBE / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in broker_container(deployment)["volumeMounts"]:
        assert mount["name"] in volumes, mount
    referenced = {v.get("configMap", {}).get("name") or v.get("secret", {}).get("secretName") for v in volumes.values()}
    assert referenced - {None} <= generated
    shipped = {p.name for p in (REPO / "policies").iterdir() if p.suffix in (".csv", ".conf", ".toml")}
    listed = {
        Path(f).name for g in kustomization["configMapGenerator"] if g["name"] == "broker-policies" for f in g["files"]
    }
    assert shipped == listed, "every policy file ships in the ConfigMap"


def test_the_sidecar_probes_and_grace_period_match_its_settings() -> None:
    settings = load_settings(KUBE / "broker.toml")
    assert settings.problems() == []
    [deployment] = documents(KUBE / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    broker = broker_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in broker["ports"]}
    assert ports == {"proxy": settings.server.port, "admin": settings.server.admin_port}
    for probe, path in (("readinessProbe", "/-/readyz"), ("livenessProbe", "/-/healthz")):
        assert broker[probe]["httpGet"] == {"path": path, "port": "admin"}
    grace = settings.server.drain_seconds + settings.server.shutdown_timeout_seconds
    assert pod["terminationGracePeriodSeconds"] > grace
    assert broker["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    assert broker["resources"]["requests"] and broker["resources"]["limits"]["memory"]
    mounted = {m["mountPath"] for m in broker["volumeMounts"]}
    assert str(settings.policy.directory) in mounted
    assert str(Path(settings.audit.signing_key).parent) in mounted
    assert str(Path(settings.audit.chain_state).parent) in mounted
    env = {e["name"] for e in broker["env"]}
    assert "BROKER_METER_REDIS_URL_FILE" in env  # the Redis password comes from the Secret
    [service] = documents(KUBE / "service.yaml")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["proxy"]  # the admin port stays inside
    [pdb] = documents(KUBE / "pdb.yaml")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_compose_stack_configures_the_broker_from_the_environment() -> None:
    [compose] = documents(REPO / "deploy" / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"sample", "redis", "postgres", "broker"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    broker = services["broker"]
    assert set(broker["depends_on"]) == {"sample", "redis", "postgres"}
    environment = {
        k: str(v)
        for k, v in broker["environment"].items()
        if k.startswith("BROKER_") and k not in {"BROKER_DEV_SECRET", "BROKER_PG_PASSWORD"}
    }
    settings = apply_env(load_settings(REPO / "deploy" / "broker.toml"), environment)
    assert settings.upstream.url == "http://sample:8081" and settings.meter.store == "redis"
    assert settings.server.admin_port == 9090 and "9090" in " ".join(broker["healthcheck"]["test"])
    assert [p for p in settings.problems() if "key source" not in p] == []
    assert services["sample"]["entrypoint"][:3] == ["python", "-m", "broker.demo.upstream"]


def _locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a `uv pip compile --generate-hashes` lock."""
    found: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and "==" in line:
            name, version = line.split(" ", 1)[0].split("==")
            found[name.lower()] = (version, 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = found[name.lower()]
            found[name.lower()] = (version, hashes + 1)
    return found


def test_the_image_lock_pins_every_dependency_of_pyproject_at_its_version_with_hashes() -> None:
    import tomllib  # noqa: PLC0415 - only this test reads pyproject

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = _locked(REPO / "requirements.lock")
    for requirement in project["dependencies"]:
        spec = requirement.split(";", 1)[0].strip()
        name, version = spec.split("==")
        name = name.split("[", 1)[0].lower()
        assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock: run make lock"
        assert locked[name][0] == version, f"{name}: pyproject {version}, lock {locked[name][0]}: run make lock"
    assert all(hashes for _version, hashes in locked.values()), "every locked package must carry its hashes"
    build = _locked(REPO / "requirements-build.lock")
    assert "setuptools" in build and build["setuptools"][1], "the build backend is locked with hashes too"


def test_the_image_is_pinned_by_digest_installs_only_what_is_locked_and_runs_as_non_root() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    image = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert "@sha256:" in image and len(image.rsplit(":", 1)[1]) == 64, image
    assert all(
        line in ("FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE}") for line in lines if line.startswith("FROM")
    )
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("--require-hashes" in line or "--no-deps" in line for line in installs), installs
    final_user = [line for line in lines if line.startswith("USER ")][-1]
    user = final_user.split()[1].split(":")[0]
    assert user.isdigit() and int(user) > 0, final_user  # numeric: runAsNonRoot can check it
    [deployment] = documents(KUBE / "deployment.yaml")
    security = broker_container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)
