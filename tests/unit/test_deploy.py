"""The deployment files are checked, not just present: the Kubernetes base and the compose
file parse, point at what exists, and agree with the broker's own settings; the
Prometheus alerts and the Grafana dashboard parse (their PromQL too) and name only
metrics the broker exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import promql_parser
import yaml

from broker.admin.metrics import Metrics
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
    assert set(services) == {"sample", "redis", "postgres", "certs", "broker"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    broker = services["broker"]
    assert set(broker["depends_on"]) == {"sample", "redis", "postgres", "certs"}
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
    # the PostgreSQL door is on, with the login initdb.sh creates, and waits for the database
    database = services["postgres"]["environment"]
    door = settings.postgres
    assert door.enabled and door.host == "0.0.0.0" and door.server_host == "postgres"  # noqa: S104 - in its container
    assert door.server_database == database["POSTGRES_DB"]
    assert (door.server_user, door.server_password) == (database["BROKER_DOOR_USER"], database["BROKER_DOOR_PASSWORD"])
    assert door.server_user != database["POSTGRES_USER"] and not door.allow_superuser
    assert broker["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "./postgres/initdb.sh:/docker-entrypoint-initdb.d/10-logistics.sh:ro" in services["postgres"]["volumes"]


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
    assert security["runAsUser"] == int(user)
    assert "TMPDIR" not in "\n".join(line for line in lines if line.startswith("ENV")), "see the next test"


def test_the_image_sets_no_tmpdir_and_says_why_tmp_must_be_private() -> None:
    """The policy builder's fork server (Python 3.11's does not authenticate callers, and
    its children unpickle what they are sent) keeps its socket under the temp directory:
    in /dev/shm, shared by every container of a pod, the app could run code as the broker."""
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not any("TMPDIR" in line or "/dev/shm" in line for line in instructions), "no TMPDIR, nothing in /dev/shm"
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "fork-server socket" in comment and "--tmpfs /tmp" in comment and "/dev/shm" in comment
    readme = (REPO / "README.md").read_text()
    assert "docker run --read-only --tmpfs /tmp" in readme


def test_the_pod_gives_tmp_to_the_broker_alone_and_the_app_a_uid_of_its_own() -> None:
    [deployment] = documents(KUBE / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    broker = broker_container(deployment)
    [tmp] = [m for m in broker["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly")
    assert volumes[tmp["name"]]["emptyDir"].get("sizeLimit"), "a Memory emptyDir counts against the pod: bound it"
    image_uid = broker["securityContext"]["runAsUser"]
    assert broker["securityContext"]["runAsGroup"] == image_uid
    assert "runAsUser" not in pod["securityContext"] and "runAsGroup" not in pod["securityContext"]  # set per container
    others = [c for c in pod["containers"] + pod.get("initContainers", []) if c is not broker]
    assert others, "the legacy app runs beside the broker"
    for container in others:
        mounts = container.get("volumeMounts", [])
        assert all(m["name"] != tmp["name"] and m["mountPath"].rstrip("/") != "/tmp" for m in mounts), container["name"]
        security = container.get("securityContext", {})
        assert security.get("runAsUser") not in (None, image_uid), f"{container['name']}: a uid of its own"
        assert security.get("runAsGroup") not in (None, image_uid), f"{container['name']}: a gid of its own"
    for container in pod["containers"] + pod.get("initContainers", []):
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        assert "TMPDIR" not in env and "/dev/shm" not in " ".join(env.values()), container["name"]
        assert all(m["mountPath"] != "/dev/shm" for m in container.get("volumeMounts", [])), container["name"]
    assert not pod.get("shareProcessNamespace"), "another container would reach the broker's /proc/<pid>/root/tmp"


def test_the_compose_broker_has_a_private_tmp_a_read_only_root_and_a_door_certificate() -> None:
    [compose] = documents(REPO / "deploy" / "compose.yaml")
    services = compose["services"]
    broker = services["broker"]
    assert broker["read_only"] is True
    [tmp] = [entry for entry in broker["tmpfs"] if entry.split(":", 1)[0] == "/tmp"]
    assert "size=" in tmp, "a tmpfs without a size may take half the machine's memory"
    assert "TMPDIR" not in broker["environment"] and broker.get("ipc", "private") in ("private", "none")
    # the door's certificate and key: configured, in a volume the certs service fills first
    environment = {k: str(v) for k, v in broker["environment"].items() if k.startswith("BROKER_POSTGRES_")}
    door = apply_env(load_settings(REPO / "deploy" / "broker.toml"), environment).postgres
    assert door.tls_cert_file and door.tls_key_file, "the compose door needs TLS: the host is no loopback peer"
    cert_file, key_file = Path(door.tls_cert_file), Path(door.tls_key_file)
    assert cert_file.parent == key_file.parent
    directory = str(cert_file.parent)
    [mounted] = [v for v in broker["volumes"] if v.split(":")[1] == directory]
    volume = mounted.split(":")[0]
    assert mounted.endswith(":ro") and volume in compose["volumes"]
    certs = services["certs"]
    assert f"{volume}:{directory}" in certs["volumes"]
    command = certs["entrypoint"]
    assert command[:2] == ["broker", "dev-cert"] and command[command.index("--out") + 1] == directory
    assert "--if-missing" in command  # a second `up` keeps the certificate it made
    assert (cert_file.name, key_file.name) == ("door.crt", "door.key")  # what dev-cert writes
    assert broker["depends_on"]["certs"] == {"condition": "service_completed_successfully"}
    header = (REPO / "deploy" / "compose.yaml").read_text().split("\nname:", 1)[0]
    assert 'psql "host=localhost port=6432 sslmode=require' in header


def test_the_compose_database_is_healthy_only_once_it_answers_over_tcp() -> None:
    [compose] = documents(REPO / "deploy" / "compose.yaml")
    check = compose["services"]["postgres"]["healthcheck"]
    test = check["test"]
    assert test[:2] == ["CMD", "pg_isready"] and test[test.index("-h") + 1] == "127.0.0.1"
    assert test[test.index("-d") + 1] == compose["services"]["postgres"]["environment"]["POSTGRES_DB"]
    assert check["start_period"]


PROMETHEUS_ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
GRAFANA_DASHBOARD = REPO / "deploy" / "grafana" / "broker-dashboard.json"
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
"""Grafana's own variables, replaced by a duration before the PromQL is parsed."""


def broker_series() -> set[str]:
    """Every series name the broker exposes: the registry's collectors with the suffixes
    Prometheus adds (counters `_total`, histograms `_bucket`/`_sum`/`_count`), the audit
    gauges included (registered once a sink with a backlog is watched)."""
    metrics = Metrics()
    backlog = SimpleNamespace(bytes=0, events=0, dropped=0, write_failures=0)
    metrics.watch_audit(SimpleNamespace(backlog=backlog, accepting=True))
    names: set[str] = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects, from its parse tree (so a metric named
    only in a label value or a comment does not count, and a syntax error fails)."""
    for variable, duration in GRAFANA_RANGES.items():
        expr = expr.replace(variable, duration)
    found: set[str] = set()
    pending: list[Any] = [promql_parser.parse(expr)]
    while pending:
        node = pending.pop()
        if isinstance(node, promql_parser.VectorSelector):
            found.add(node.name)
            continue
        for attribute in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attribute, None)
            if child is not None:
                pending.append(child)
        pending.extend(getattr(node, "args", None) or ())
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(PROMETHEUS_ALERTS.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> dict[str, str]:
    """Each target's expression (and each annotation's) by where it sits."""
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    exprs = {f"annotation {a['name']}": a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            exprs[f"{panel['title']} {target['refId']}"] = target["expr"]
    return exprs


def test_the_alert_rules_are_well_formed() -> None:
    document = yaml.safe_load(PROMETHEUS_ALERTS.read_text())
    groups = [g["name"] for g in document["groups"]]
    assert len(groups) == len(set(groups))
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "alert names are unique"
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        promql_metrics(rule["expr"])  # parses


def test_the_alerts_cover_what_operators_must_hear_of() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    assert 'broker_signals_total{action="freeze"}' in exprs["BrokerEmployeeFrozen"]
    assert 'broker_signals_total{action="flag"}' in exprs["BrokerSignalRaised"]
    assert exprs["BrokerAuditNotAccepting"] == "broker_audit_accepting == 0"
    assert "broker_audit_backlog_bytes" in exprs["BrokerAuditBacklog"]
    assert 'outcome="rejected"' in exprs["BrokerPolicyReloadRejected"]
    assert 'outcome!~"applied|unchanged"' in exprs["BrokerRosterPullRefused"]
    assert "broker_roster_last_pull_success_timestamp_seconds > 0" in exprs["BrokerRosterStale"]  # 0: never pulled
    assert "meter.unavailable" in exprs["BrokerMeterUnavailable"] and "fallback" in exprs["BrokerMeterFallback"]
    assert "broker_upstream_errors_total" in exprs["BrokerUpstreamErrors"]
    assert "sum by (reason)" in exprs["BrokerDenialSpike"] and "offset" in exprs["BrokerDenialSpike"]


def test_the_dashboard_parses_and_its_panels_are_placed() -> None:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24 and place["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    shown = set().union(*map(promql_metrics, dashboard_exprs().values()))
    for needed in (
        "broker_decisions_total", "broker_request_duration_seconds_bucket", "broker_records_returned_total",
        "broker_signals_total", "broker_audit_backlog_events", "broker_pg_sessions", "broker_pg_statements_total",
    ):  # fmt: skip
        assert needed in shown, needed


def test_every_metric_the_alerts_and_dashboard_use_is_one_the_broker_exposes() -> None:
    """A metric renamed in broker/admin/metrics.py fails here, not silently on a pager."""
    exposed = broker_series()
    used = {f"alert {r['alert']}": promql_metrics(r["expr"]) for r in alert_rules()}
    used |= {f"panel {where}": promql_metrics(expr) for where, expr in dashboard_exprs().items()}
    unknown = {where: sorted(names - exposed) for where, names in used.items() if names - exposed}
    assert unknown == {}
    assert all(names for names in used.values()), "every expression selects some metric"


def test_the_metric_check_would_catch_a_rename() -> None:
    assert promql_metrics('sum by (reason) (rate(broker_decision_total{verdict="deny"}[$__rate_interval]))') == {
        "broker_decision_total"
    }
    assert "broker_decision_total" not in broker_series()
    assert {"broker_request_duration_seconds_bucket", "broker_audit_accepting"} <= broker_series()
