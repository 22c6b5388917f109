"""Every YAML in cluster/ parses and follows the cluster contract of cluster/README.md.

Checked: Ray's own schema for the launcher configs; images and Ray versions against the pin
in pyproject.toml; RAY_AUTH_MODE=token on every head, worker, autoscaler and submitter, the
token only ever from a Secret or a local file; no LoadBalancer/NodePort service or ingress;
no world-open ingress but SSH; shared storage on every node; one RayJob per job verb whose
entrypoint flags exist in jobs/<verb>.py.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's venv is 3.11
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO_ROOT / "cluster"
LAUNCHER_CONFIGS = ("aws.yaml", "gcp.yaml")
JOB_VERBS = ("extract", "train", "tune", "score")
IMAGE_PATTERN = re.compile(
    r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<python>\d)(?P<minor>\d+)(?P<gpu>-gpu)?$"
)
WORLD = ("0.0.0.0/0", "::/0")
SHARED_MOUNT = "/mnt/crif"
TOKEN_SECRET = "crif-ray-token"


# ---------------------------------------------------------------------------- helpers


def ray_pin() -> SpecifierSet:
    """The specifier of `ray[...]` in pyproject.toml's dependencies, e.g. ``==2.60.*``."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.match(r"^ray(\[[^\]]*\])?\s*(?P<specifier>[=<>!~].*)$", requirement)
        if match:
            return SpecifierSet(match.group("specifier"))
    raise AssertionError("pyproject.toml pins no ray version")


def minimum_python() -> tuple[int, int]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups()
    return int(major), int(minor)


def load_documents(name: str) -> list[dict]:
    return [
        document for document in yaml.safe_load_all((CLUSTER_DIR / name).read_text()) if document
    ]


def kuberay_files() -> list[str]:
    return sorted(path.name for path in CLUSTER_DIR.glob("kuberay-*.yaml"))


def walk(node, path=()) -> Iterator[tuple[tuple, object]]:
    """Every (path, value) pair of a parsed YAML tree, containers included."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def images(document) -> list[str]:
    keys = ("image", "head_image", "worker_image")
    return [value for path, value in walk(document) if path and path[-1] in keys]


def ray_cluster_specs(document: dict) -> list[dict]:
    """The RayClusterSpec(s) of a RayCluster or RayJob document."""
    if document.get("kind") == "RayCluster":
        return [document["spec"]]
    if document.get("kind") == "RayJob" and "rayClusterSpec" in document["spec"]:
        return [document["spec"]["rayClusterSpec"]]
    return []


def ray_pod_templates(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])]
    groups += [(group["groupName"], group) for group in spec.get("workerGroupSpecs", [])]
    return [(name, group["template"]["spec"]) for name, group in groups]


def environment(container: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def assert_token_from_secret(container_environment: dict[str, dict], where: str) -> None:
    assert container_environment.get("RAY_AUTH_MODE", {}).get("value") == "token", where
    token = container_environment.get("RAY_AUTH_TOKEN")
    assert token is not None and "value" not in token, f"{where}: token must come from a Secret"
    reference = token["valueFrom"]["secretKeyRef"]
    assert reference["name"] == TOKEN_SECRET and reference["key"], where


# ---------------------------------------------------------------------------- all files


def test_every_yaml_parses_and_the_expected_files_exist():
    names = sorted(path.name for path in CLUSTER_DIR.glob("*.yaml"))
    expected = {"aws.yaml", "gcp.yaml", "kuberay-raycluster.yaml"}
    expected |= {f"kuberay-rayjob-{verb}.yaml" for verb in JOB_VERBS}
    assert expected <= set(names)
    for name in names:
        assert load_documents(name), f"{name} is empty"


@pytest.mark.parametrize("name", sorted(path.name for path in CLUSTER_DIR.glob("*.yaml")))
def test_images_and_ray_versions_agree_with_the_pyproject_pin(name):
    pin, (python_major, python_minor) = ray_pin(), minimum_python()
    versions = set()
    for document in load_documents(name):
        found = images(document)
        for image in found:
            match = IMAGE_PATTERN.match(image)
            assert match, f"{name}: {image!r} is not a rayproject/ray:<version>-py3XX[-gpu] image"
            assert Version(match["version"]) in pin, f"{name}: {image} outside ray{pin}"
            python = (int(match["python"]), int(match["minor"]))
            assert python >= (python_major, python_minor), f"{name}: {image} older than Python"
            assert python == (3, 11), f"{name}: {image} (the project's images are py311)"
            versions.add(match["version"])
        for spec in ray_cluster_specs(document):
            versions.add(spec["rayVersion"])
            assert Version(spec["rayVersion"]) in pin, f"{name}: rayVersion outside ray{pin}"
    assert len(versions) <= 1, f"{name}: several Ray versions {versions}"


def test_one_ray_version_everywhere_and_the_installed_ray_matches():
    import ray

    versions = set()
    for path in CLUSTER_DIR.glob("*.yaml"):
        for document in load_documents(path.name):
            versions |= {IMAGE_PATTERN.match(image)["version"] for image in images(document)}
    assert len(versions) == 1, versions
    assert Version(ray.__version__) in ray_pin()


@pytest.mark.parametrize("name", sorted(path.name for path in CLUSTER_DIR.glob("*.yaml")))
def test_no_committed_token_and_no_public_service(name):
    text = (CLUSTER_DIR / name).read_text()
    assert not re.search(r"\b[0-9a-f]{64}\b", text), f"{name}: looks like a committed token"
    for document in load_documents(name):
        assert document.get("kind") not in ("Secret", "Ingress"), f"{name}: {document['kind']}"
        for path, value in walk(document):
            if path and path[-1] == "RAY_AUTH_TOKEN":
                raise AssertionError(f"{name}: RAY_AUTH_TOKEN given as a literal at {path}")
            if path and path[-1] in ("serviceType", "type") and "Service" in str(path):
                assert value not in ("LoadBalancer", "NodePort"), f"{name}: {path} = {value}"
            if path and path[-1] == "serviceType":
                assert value == "ClusterIP", f"{name}: {path} = {value}"
            if path and path[-1] == "enableIngress":
                assert value is not True, f"{name}: {path}"
        if document.get("kind") == "Service":
            assert document.get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


# ---------------------------------------------------------------------------- launcher


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_own_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = load_documents(name)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "docker"):
        assert key in config, f"{name}: missing {key}"
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs first


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_node_groups_cpu_head_autoscaling_gpu_and_cpu(name):
    (config,) = load_documents(name)
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not IMAGE_PATTERN.match(config["docker"]["head_image"])["gpu"]
    workers = {key: value for key, value in node_types.items() if key != config["head_node_type"]}
    gpu_groups = [value for value in workers.values() if value["resources"].get("GPU", 0) > 0]
    cpu_groups = [value for value in workers.values() if value["resources"].get("GPU", 0) == 0]
    assert gpu_groups and cpu_groups, f"{name}: needs a GPU group and a CPU group"
    for group in workers.values():
        assert group["max_workers"] > group.get("min_workers", 0), f"{name}: not autoscaling"
    for group in gpu_groups:
        assert IMAGE_PATTERN.match(group["docker"]["worker_image"])["gpu"]
    assert not IMAGE_PATTERN.match(config["docker"]["worker_image"])["gpu"]


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_token_auth_on_every_node_and_dashboard_on_localhost(name):
    (config,) = load_documents(name)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [command for command in config[key] if "ray start" in command]
        assert starts, f"{name}: {key} starts no Ray"
        for command in starts:
            assert "RAY_AUTH_MODE=token" in command, f"{name}: {key}"
            assert "0.0.0.0" not in command, f"{name}: {key} binds a public address"
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    # The token travels as a file from the user's machine, never inside the config.
    mounts = config["file_mounts"]
    assert any(target.endswith("/.ray/auth_token") for target in mounts), name
    assert all(not source.startswith("/work") for source in mounts.values())


def _world_open_rules(config: dict) -> Iterator[tuple[tuple, dict | None]]:
    """For every world CIDR in the config: its path and the IpPermissions rule around it."""
    for path, value in walk(config):
        if value in WORLD:
            rule = None
            if "IpPermissions" in path:
                index = path.index("IpPermissions")
                rule = config
                for key in path[: index + 2]:
                    rule = rule[key]
            yield path, rule


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_opens_nothing_to_the_world_but_ssh(name):
    (config,) = load_documents(name)
    for path, rule in _world_open_rules(config):
        assert rule is not None, f"{name}: world-open address outside a firewall rule: {path}"
        assert rule.get("FromPort") == 22 and rule.get("ToPort") == 22, f"{name}: {rule}"
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        if set(ranges) & set(WORLD):
            assert rule["FromPort"] == rule["ToPort"] == 22, f"{name}: {rule}"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_installs_the_project_and_mounts_shared_storage(name):
    (config,) = load_documents(name)
    mounts = config["file_mounts"]
    project_target = next(target for target, source in mounts.items() if source == ".")
    assert any("pip install" in c and project_target in c for c in config["setup_commands"])
    assert {".venv", ".git", "outputs"} <= set(config["rsync_exclude"])
    assert f"--volume {SHARED_MOUNT}:{SHARED_MOUNT}" in config["docker"]["run_options"]
    assert any(SHARED_MOUNT in command for command in config["initialization_commands"])


# ---------------------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("name", kuberay_files())
def test_kuberay_documents_are_ray_io_v1(name):
    for document in load_documents(name):
        if document["kind"] in ("RayCluster", "RayJob"):
            assert document["apiVersion"] == "ray.io/v1", name
            assert document["metadata"]["name"]


@pytest.mark.parametrize("name", kuberay_files())
def test_kuberay_token_auth_on_every_ray_container_autoscaler_and_submitter(name):
    for document in load_documents(name):
        for spec in ray_cluster_specs(document):
            assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
            if spec.get("enableInTreeAutoscaling"):
                autoscaler = {v["name"]: v for v in spec["autoscalerOptions"]["env"]}
                assert_token_from_secret(autoscaler, f"{name}: autoscaler")
            for group, pod in ray_pod_templates(spec):
                for container in pod["containers"]:
                    assert_token_from_secret(environment(container), f"{name}: {group}")
        if document["kind"] == "RayJob":
            submitter = document["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
            assert_token_from_secret(environment(submitter), f"{name}: submitter")


@pytest.mark.parametrize("name", kuberay_files())
def test_kuberay_pods_install_the_project_mount_shared_storage_and_match_gpu_images(name):
    claims = set()
    for document in load_documents(name):
        for spec in ray_cluster_specs(document):
            for group, pod in ray_pod_templates(spec):
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                for container in pod["containers"]:
                    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                    claim = volumes[mounts[SHARED_MOUNT]]["persistentVolumeClaim"]["claimName"]
                    claims.add(claim)
                    assert "pip install" in " ".join(container["command"]), f"{name}: {group}"
                    wants_gpu = "nvidia.com/gpu" in container["resources"].get("limits", {})
                    is_gpu = bool(IMAGE_PATTERN.match(container["image"])["gpu"])
                    assert wants_gpu == is_gpu, f"{name}: {group} GPU image mismatch"
    assert len(claims) <= 1, claims


def test_shared_claim_is_read_write_many():
    documents = load_documents("kuberay-raycluster.yaml")
    (claim,) = [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def _entrypoint_flags(entrypoint: str) -> list[str]:
    return re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", entrypoint)


@pytest.mark.parametrize("verb", JOB_VERBS)
def test_one_rayjob_per_verb_running_its_job(verb):
    (document,) = load_documents(f"kuberay-rayjob-{verb}.yaml")
    assert document["kind"] == "RayJob"
    spec = document["spec"]
    entrypoint = " ".join(spec["entrypoint"].split())
    assert entrypoint.startswith("python ") and f"jobs/{verb}.py" in entrypoint
    if "clusterSelector" in spec:  # runs on the long-lived RayCluster
        (cluster,) = [
            d for d in load_documents("kuberay-raycluster.yaml") if d["kind"] == "RayCluster"
        ]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    else:
        assert spec["rayClusterSpec"] and spec["shutdownAfterJobFinishes"] is True


def _job_help(verb: str) -> str:
    """What ``python jobs/<verb>.py --help`` prints, from ``main(["--help"])`` in-process."""
    specification = importlib.util.spec_from_file_location(
        f"crif_job_{verb}", REPO_ROOT / "jobs" / f"{verb}.py"
    )
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code in (0, None), f"jobs/{verb}.py --help exited {exit_info.value}"
    return output.getvalue()


@pytest.mark.parametrize("verb", JOB_VERBS)
def test_rayjob_entrypoint_flags_exist_in_the_job(verb):
    (document,) = load_documents(f"kuberay-rayjob-{verb}.yaml")
    flags = _entrypoint_flags(document["spec"]["entrypoint"])
    accepted = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", _job_help(verb)))
    missing = [flag for flag in flags if flag not in accepted]
    assert not missing, f"jobs/{verb}.py --help lists no {missing}"
