"""cluster.yaml, validated offline and rehearsed on a simulated multi-node cluster.

1. Offline: cluster.yaml goes through Ray's own `prepare_config` and `validate_config` (what `ray up` runs
   before it calls AWS), a misspelled key is rejected, and the security properties hold: dashboard on
   127.0.0.1, no exposed Ray port, token auth on every `ray start`, SSH only from a set address, no wildcard
   IAM, a current image.
2. Rehearsal (Ray, slow): `ray.cluster_utils.Cluster` on this machine with the node types of cluster.yaml
   (a head with CPU 0 and TRAIN_DRIVER; two "GPU" nodes, GPU_STANDIN standing in for the GPU), token auth
   on every node and in the driver. The real `sweeps/base2new.py --smoke --address <cluster>` runs on it;
   Ray's state API then shows where the trial drivers and the Train workers ran.
3. Storage no worker can reach is refused before any trial, in one sentence (`dualprompt.cluster`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError

from dualprompt.cluster import SHARED_ENV, StorageError, autoscaler_can_add, probe_storage, storage_verdict

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
IAM = REPO / "cluster" / "iam"
SCRIPT = REPO / "sweeps" / "base2new.py"
RAY_PORTS = (8265, 6379, 10001)  # dashboard + job API, GCS, Ray Client


def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared(config: dict | None = None) -> dict:
    """What `ray up` validates: the config merged with the AWS defaults, then checked against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config if config is not None else raw()))
    validate_config(config)
    return config


def start_commands(config: dict, which: str) -> list[str]:
    return [c for c in config[f"{which}_start_ray_commands"] if "ray start" in c]


# ---------------------------------------------------------------- 1. offline validation and security


def test_cluster_yaml_passes_rays_own_validation():
    config = prepared()
    assert config["head_node_type"] == "head"
    assert config["available_node_types"]["head"]["max_workers"] == 0


@pytest.mark.parametrize("mutate,error,message", [
    (lambda c: c.__setitem__("idle_timout_minutes", c.pop("idle_timeout_minutes")),
     ValidationError, "'idle_timout_minutes' was unexpected"),
    (lambda c: c["available_node_types"]["gpu_24gb"].__setitem__(
        "min_wrkers", c["available_node_types"]["gpu_24gb"].pop("min_workers")),
     ValidationError, "'min_wrkers' was unexpected"),
    (lambda c: c["docker"].__setitem__("imgae", c["docker"].pop("image")),
     AssertionError, "Must provide a container & image name"),
    (lambda c: c.__setitem__("head_node_type", "haed"),
     ValueError, "`head_node_type` must be one of `available_node_types`"),
    (lambda c: c["available_node_types"]["gpu_24gb"].__setitem__("min_workers", 99),
     ValueError, "global `max_workers` is smaller than the sum of `min_workers`"),
], ids=["top-level key", "node type key", "docker key", "head node type", "min over max"])
def test_a_misspelled_or_inconsistent_config_is_rejected(mutate, error, message):
    """Each broken config fails Ray's own checks (what `ray up` runs) for the reason it was broken."""
    config = raw()
    mutate(config)
    with pytest.raises(error, match=re.escape(message)):
        prepared(config)


def test_head_runs_no_training_and_pins_trial_drivers():
    types = prepared()["available_node_types"]
    assert types["head"]["resources"]["CPU"] == 0 and types["head"]["resources"]["TRAIN_DRIVER"] >= 1
    gpu = {name: t for name, t in types.items() if name != "head" and t["max_workers"] > 0}
    assert gpu, "no GPU worker type can scale up"
    for node_type in gpu.values():
        assert node_type["min_workers"] == 0  # nothing is paid for while no sweep runs
        assert node_type["node_config"]["InstanceType"] in ("g5.xlarge", "g6.xlarge")  # 24 GB single-GPU
        assert "TRAIN_DRIVER" not in node_type["resources"]
    assert 0 < prepared()["idle_timeout_minutes"] <= 30


def test_dashboard_is_bound_to_localhost_on_the_head():
    config = prepared()
    heads = start_commands(config, "head")
    assert heads and all("--dashboard-host=127.0.0.1" in c for c in heads)
    assert not any("0.0.0.0" in c for c in config["head_start_ray_commands"])


def test_every_ray_start_uses_token_auth_and_the_token_is_mounted():
    config = prepared()
    for which in ("head", "worker"):
        commands = start_commands(config, which)
        assert commands, which
        for command in commands:
            assert command.count("ray start") == command.count("RAY_AUTH_MODE=token ray start"), command
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    # Drivers started from a shell on the head (ray submit, ray attach) get the mode from the env file too.
    assert any("export RAY_AUTH_MODE=token" in c for c in config["setup_commands"])


def test_no_ray_port_is_exposed_and_ssh_comes_from_a_set_address_only():
    config = prepared()
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    rules += json.loads((REPO / "cluster" / "ssh-ingress.json").read_text())
    for rule in rules:
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        assert rule.get("IpProtocol") != "-1" and low != -1, f"rule opens every port: {rule}"
        assert not any(low <= port <= high for port in RAY_PORTS), f"rule exposes a Ray port: {rule}"
        assert (low, high) == (22, 22)
        for ip_range in rule.get("IpRanges", []) + rule.get("Ipv6Ranges", []):
            cidr = ip_range.get("CidrIp") or ip_range.get("CidrIpv6")
            assert cidr not in ("0.0.0.0/0", "::/0"), rule
            assert cidr.endswith("/32") and ip_range.get("Description")
    # A group the launcher creates itself always opens SSH to 0.0.0.0/0: every node type names its own.
    for name, node_type in config["available_node_types"].items():
        groups = node_type["node_config"].get("SecurityGroupIds")
        assert groups and all(g.startswith("sg-") for g in groups), name
    assert not any(re.search(r"(^|\s)(-p|--publish)(\s|=)", option) for option in config["docker"]["run_options"])


def iam_statements() -> list[tuple[str, dict]]:
    return [(path.name, statement) for path in sorted(IAM.glob("*-policy.json")) if "trust" not in path.name
            for statement in json.loads(path.read_text())["Statement"]]


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def test_iam_policies_grant_no_wildcard_action_or_resource():
    statements = iam_statements()
    assert {name for name, _ in statements} == {"head-policy.json", "worker-policy.json"}
    for name, statement in statements:
        actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        assert all("*" not in action for action in actions), (name, actions)
        for resource in resources:
            if resource == "*":  # AWS offers no resource scoping for these read-only calls
                assert all(a.startswith("ec2:Describe") for a in actions), (name, statement)
                assert statement["Condition"]["StringEquals"]["aws:RequestedRegion"]
            elif resource.startswith("arn:aws:s3:::"):
                assert resource.startswith("arn:aws:s3:::CHANGE-ME-BUCKET"), resource
                assert resource in ("arn:aws:s3:::CHANGE-ME-BUCKET", "arn:aws:s3:::CHANGE-ME-BUCKET/dualprompt/") \
                    or resource.startswith("arn:aws:s3:::CHANGE-ME-BUCKET/dualprompt/"), resource
    worker_actions = {a for name, s in statements if name == "worker-policy.json" for a in as_list(s["Action"])}
    assert all(a.startswith("s3:") for a in worker_actions)  # a worker can touch the bucket and nothing else
    head = [s for name, s in statements if name == "head-policy.json"]
    destructive = [s for s in head if {"ec2:TerminateInstances", "ec2:CreateTags"} & set(as_list(s["Action"]))]
    assert all("Condition" in s for s in destructive)  # only this cluster's instances
    passrole = [s for s in head if "iam:PassRole" in as_list(s["Action"])]
    assert passrole and all(r.endswith(":role/dualprompt-ray-worker") for s in passrole for r in as_list(s["Resource"]))


def test_every_node_has_a_least_privilege_instance_profile_not_the_launcher_default():
    assert "FullAccess" not in json.dumps(raw())  # no AWS-managed full-access policy anywhere (comments aside)
    types = prepared()["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in types.items()}
    assert profiles["head"].endswith("/dualprompt-ray-head")
    assert all(arn.endswith("/dualprompt-ray-worker") for name, arn in profiles.items() if name != "head")


def launcher_default_amis() -> set[str]:
    """The AMIs `ray up` falls back to (AWS Deep Learning AMI, Ubuntu 18.04), read from Ray's source without
    importing it (that module needs boto3)."""
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec("ray.autoscaler").origin).parent / "_private" / "aws" / "config.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEFAULT_AMI" for t in node.targets):
            amis = set(ast.literal_eval(node.value).values())
            assert amis
            return amis
    raise AssertionError("Ray's DEFAULT_AMI table moved; update this test")


def test_image_is_current_not_the_launchers_default():
    import ray

    config = prepared()
    version = ray.__version__
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert config["docker"]["image"] == f"rayproject/ray:{version}-{python}-gpu"
    assert config["docker"]["head_image"] == f"rayproject/ray:{version}-{python}-cpu"
    for name, node_type in config["available_node_types"].items():
        ami = node_type["node_config"].get("ImageId", "")
        assert ami.startswith("ami-") and ami not in launcher_default_amis(), name  # never the Ubuntu 18.04 DLAMI
    pins = (REPO / "cluster" / "requirements.txt").read_text()
    assert f"ray[default,train,tune]=={version}\n" in pins
    setup = " ".join(config["setup_commands"])
    assert "cluster/requirements.txt" in setup and "--no-deps ~/dualprompt" in setup
    assert "ray-3.0.0.dev0" not in " ".join(config["head_setup_commands"] + config["worker_setup_commands"])


def test_every_value_to_change_carries_a_comment():
    lines = CLUSTER_YAML.read_text().splitlines()
    for number, line in enumerate(lines):
        if "CHANGE-ME" in line and not line.lstrip().startswith("#"):
            context = lines[max(0, number - 8):number + 1]
            assert any("CHANGE:" in c for c in context), f"line {number + 1} has no CHANGE: comment: {line.strip()}"


def test_the_results_bucket_is_given_once():
    values = json.dumps(raw())  # comments aside
    assert values.count("s3://") == 1 and "export DUALPROMPT_S3=s3://" in values


# ---------------------------------------------------------------- 3. storage verdict (no Ray needed)


def test_storage_verdict_is_one_sentence_naming_the_node_and_the_fix():
    reason = storage_verdict("/home/ray/results", "10.0.0.1:6379",
                             {"10.0.0.1 ab (head node)": None, "10.0.0.2 cd (GPU node)": "does not see the files "
                              "the driver writes there"}, n_nodes=2)
    assert reason.count(". ") == 0 and reason.endswith(".") and "10.0.0.2 cd (GPU node) does not see" in reason
    assert "s3://" in reason


def test_local_folder_on_a_cluster_without_a_worker_up_is_refused_unless_marked_shared():
    answers = {"10.0.0.1 ab (head node, the driver's)": None}
    assert "no worker node" in storage_verdict("/data/results", "auto", answers, n_nodes=1)
    assert SHARED_ENV in storage_verdict("/data/results", "auto", answers, n_nodes=1)
    assert storage_verdict("/data/results", "auto", answers, n_nodes=1, shared=True) is None
    assert storage_verdict("s3://b/results", "auto", answers, n_nodes=1) is None
    assert storage_verdict("/data/results", "local", {}, n_nodes=1) is None


def test_probe_sees_the_marker_only_where_the_driver_wrote_it(tmp_path):
    (tmp_path / ".reach-x").write_text("token")
    assert probe_storage(str(tmp_path), ".reach-x", "token") is None
    assert "does not see" in probe_storage(str(tmp_path / "elsewhere"), ".reach-x", "token")
    assert "different folder" in probe_storage(str(tmp_path), ".reach-x", "other")


def test_a_sweep_may_wait_for_gpu_nodes_only_on_a_head_whose_autoscaler_can_add_them(tmp_path):
    config = prepared()
    # What `ray up` leaves on the head: node types with CPU/GPU filled in from the instance types.
    config["available_node_types"]["gpu_24gb"]["resources"] = {"CPU": 4, "GPU": 1}
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(config))
    assert autoscaler_can_add("GPU", str(bootstrap))
    config["available_node_types"]["gpu_24gb"]["max_workers"] = 0
    bootstrap.write_text(yaml.safe_dump(config))
    assert not autoscaler_can_add("GPU", str(bootstrap))
    assert not autoscaler_can_add("GPU", str(tmp_path / "absent.yaml"))  # not a `ray up` head


# ---------------------------------------------------------------- 2. rehearsal on a simulated cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    """cluster.yaml's node types on one machine: head (CPU 0, TRAIN_DRIVER) + 2 "GPU" nodes, token auth on."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state  # Ray's own test helper
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    head_resources = prepared()["available_node_types"]["head"]["resources"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.delenv("RAY_AUTH_TOKEN", raising=False)
        reset_auth_token_state()  # this process read the auth settings when Ray was first used: read them again
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_resources["CPU"], "resources": {"TRAIN_DRIVER": head_resources["TRAIN_DRIVER"]},
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
            "object_store_memory": 200 * 1024**2})
        gpu_nodes = [cluster.add_node(num_cpus=1, resources={"GPU_STANDIN": 1}, object_store_memory=150 * 1024**2)
                     for _ in range(2)]
        cluster.wait_for_nodes()
        try:
            yield {"cluster": cluster, "root": root, "env": env, "head": cluster.head_node.node_id,
                   "gpu": {n.node_id for n in gpu_nodes}}
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    reset_auth_token_state()  # back to this pytest process's own settings for later tests


def connect(fake_cluster):
    import ray

    if not ray.is_initialized():
        ray.init(address=fake_cluster["cluster"].address, log_to_driver=False)


@pytest.fixture(scope="module")
def rehearsal(fake_cluster):
    """The real sweep script, joined to the fake cluster like `python sweeps/base2new.py --address auto` on
    the head: both stages of the smoke sweep, results on the storage folder every node shares."""
    root = fake_cluster["root"]
    storage = root / "shared-storage"
    args = ["--smoke", "--pretrained", "random", "--address", fake_cluster["cluster"].address,
            "--storage-path", str(storage), "--name", "rehearsal", "--cpus-per-worker", "1", "--max-concurrent", "2"]
    env = {**os.environ, **fake_cluster["env"], "DUALPROMPT_DATA_ROOT": str(root / "data"),
           "DUALPROMPT_CACHE_DIR": str(root / "features")}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                            timeout=330)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"storage": storage, "rows_dir": storage / "rehearsal", "result": result,
            "wall_s": time.monotonic() - started}


def rehearsal_final_variants(rows) -> set[str]:
    """2 search trials: rank 2 is validated as "top2" unless it is the defaults' trial (trained once)."""
    from dualprompt.tables import best_search_trials

    second = best_search_trials(rows, k=2)["trial_id"].iloc[1]
    top2 = set() if second in set(rows.loc[rows["variant"] == "defaults", "search_trial_id"]) else {"top2"}
    return {"best", "defaults", "zeroshot", "coop", "kgcoop", *top2}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rehearsal_trial_drivers_on_the_head_train_workers_on_gpu_nodes(fake_cluster, rehearsal):
    from ray.util.state import list_actors

    from dualprompt.results import read_results

    rows = read_results(rehearsal["rows_dir"])
    final_variants = rehearsal_final_variants(rows)
    assert len(rows) == 2 + len(final_variants) and (rows["status"] == "ok").all(), rows["error"].tolist()
    assert set(rows.loc[rows["stage"] == "final", "variant"]) == final_variants
    assert sorted(rows["stage"].unique()) == ["final", "search"]
    connect(fake_cluster)
    actors = list_actors(detail=True, limit=10_000, raise_on_missing_output=False)
    nodes_of = {}
    for actor in actors:
        nodes_of.setdefault(actor["class_name"], set()).add(actor["node_id"])
    workers = {n for name, ids in nodes_of.items() if "TrainWorker" in name for n in ids}
    drivers = {n for name, ids in nodes_of.items() if name.endswith("ImplicitFunc")
               for n in ids}
    controllers = {n for name, ids in nodes_of.items() if "TrainController" in name for n in ids}
    print(f"\nrehearsal {rehearsal['wall_s']:.0f} s; actors by node: "
          + "; ".join(f"{name}: {sorted('head' if n == fake_cluster['head'] else 'gpu-' + n[:6] for n in ids)}"
                      for name, ids in sorted(nodes_of.items())))
    assert drivers == {fake_cluster["head"]}, nodes_of  # every Tune trial driver on the head
    assert controllers == {fake_cluster["head"]}, nodes_of  # Train's controller follows its driver
    assert workers and workers <= fake_cluster["gpu"], nodes_of  # every Train worker on a "GPU" node
    assert len(workers) == 2, nodes_of  # two trials at once used both GPU nodes


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rehearsal_rows_are_on_the_shared_storage_and_every_node_reaches_it(fake_cluster, rehearsal):
    import pandas as pd

    from dualprompt.sweep import check_storage_reachable

    files = sorted(p.name for p in rehearsal["rows_dir"].glob("*.parquet"))
    rows = pd.read_parquet(rehearsal["rows_dir"])  # pandas skips Ray's _ray/ folder and hidden files
    trials = 2 + len(rehearsal_final_variants(rows))
    assert len(files) == trials and all(re.fullmatch(r"(search|final)-.+\.parquet", f) for f in files)  # one a trial
    assert len(rows) == trials
    assert (rehearsal["rows_dir"] / "_ray" / "search").is_dir()  # Tune state on the same storage
    assert list((rehearsal["rows_dir"] / "_ray" / "search" / "train").iterdir())  # Train checkpoints too
    connect(fake_cluster)
    assert check_storage_reachable(str(rehearsal["rows_dir"]), fake_cluster["cluster"].address) == 3
    assert not list(rehearsal["rows_dir"].glob(".reach-*"))  # the probe leaves nothing behind


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rehearsal_driver_without_the_token_is_refused(fake_cluster):
    """A driver holding a wrong token is refused by the cluster's GCS for its token; the same driver with the
    cluster's token joins, so the refusal is the authentication and nothing else about the connection."""
    code = "import ray, sys; ray.init(address=sys.argv[1]); print('joined')"
    base = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        base.pop(name, None)

    def join(**auth: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, fake_cluster["cluster"].address], capture_output=True,
                              text=True, env={**base, **auth}, timeout=100)

    refused = join(RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert refused.returncode != 0 and "joined" not in refused.stdout
    assert "ray.exceptions.AuthenticationError" in refused.stderr, refused.stderr[-2000:]
    assert "InvalidAuthToken: Authentication token is missing or incorrect" in refused.stderr  # the server's answer
    admitted = join(RAY_AUTH_TOKEN_PATH=fake_cluster["env"]["RAY_AUTH_TOKEN_PATH"])
    assert admitted.returncode == 0 and admitted.stdout.strip() == "joined", admitted.stderr[-2000:]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_storage_only_the_driver_sees_is_refused_before_any_trial(fake_cluster):
    from dualprompt.sweep import check_storage_reachable

    connect(fake_cluster)
    # pyarrow's mock:// filesystem lives inside one process: no other node (process) can see it.
    with pytest.raises(StorageError) as error:
        check_storage_reachable("mock://bucket/results", fake_cluster["cluster"].address)
    message = str(error.value)
    assert "does not see the files the driver writes there" in message and "3-node" in message
    assert message.count(". ") == 0 and message.endswith(".") and "--storage-path s3://" in message


def can_unshare() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not can_unshare(), reason="needs mount namespaces (unshare --mount) to give a node its own disk")
def test_local_folder_a_gpu_node_cannot_see_is_refused_before_any_trial(fake_cluster, tmp_path):
    """A third "GPU" node in its own mount namespace, where the storage folder is an empty tmpfs: a local
    path on a multi-node cluster whose nodes do not share it, as on AWS without shared storage."""
    import ray

    from dualprompt.sweep import check_storage_reachable

    storage = tmp_path / "results"
    storage.mkdir()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    start = (f"mount -t tmpfs tmpfs {storage} && exec {ray_cli} start --address={fake_cluster['cluster'].address} "
             f"--num-cpus=1 --resources='{{\"GPU_STANDIN\": 1}}' --object-store-memory={150 * 1024**2} "
             # Free ports, not Ray's fixed defaults: other Ray instances on this machine may hold those.
             f"--dashboard-agent-listen-port={free_port()} --metrics-export-port={free_port()} "
             "--min-worker-port=0 --max-worker-port=0 --block")
    env = {**os.environ, **fake_cluster["env"]}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "node.log").open("w")
    node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", start], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    connect(fake_cluster)
    try:
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 4:
            assert node.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-2000:]
            time.sleep(0.5)
        with pytest.raises(StorageError) as error:
            check_storage_reachable(str(storage), fake_cluster["cluster"].address)
        message = str(error.value)
        print(f"\n{message}")
        assert message.startswith(f"Storage {storage} cannot be used on the 4-node Ray cluster")
        assert message.count("does not see the files the driver writes there") == 1  # only the isolated node
        assert message.count(". ") == 0 and message.endswith(".")
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops the node's processes, all in this group
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=10)
        log.close()
