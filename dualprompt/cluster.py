"""Cluster helpers: can every node of a Ray cluster reach the sweep's storage, and fetch the datasets to a node.

Since Ray 2.7 nothing is synced to the head node: Tune state, Train checkpoints and our Parquet rows go
straight to the storage path, from the head (trial drivers) and from every GPU node (Train workers). A
path that some node cannot reach (a local folder on a multi-node cluster, a bucket a worker's instance
profile cannot write) otherwise shows up only after trials have started, as one Ray error per trial.
`check_storage_reachable` finds it before the first trial: the driver writes a marker file, and a probe on
every alive node must see the marker and write a file of its own next to it.

Without a worker node up (GPU workers autoscale from zero) a local folder cannot be checked, so on a
cluster it is refused unless DUALPROMPT_STORAGE_SHARED=1 says it is a mount shared by every node.

`python -m dualprompt.cluster fetch-data` copies $DUALPROMPT_DATA_URI (e.g. s3://bucket/datasets) to
$DUALPROMPT_DATA_ROOT on a node; cluster.yaml runs it in every node's setup.

Ray is imported inside the functions that need it: the library imports without Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from .storage import StorageError, is_uri, one_line, open_storage  # noqa: F401 - re-exported for the sweep

SHARED_ENV = "DUALPROMPT_STORAGE_SHARED"  # "1": a local storage folder is a mount present on every node
MARKER_PREFIX = ".reach-"  # hidden: pyarrow and pandas skip it when a results folder is read


def probe_storage(directory: str, marker: str, expected: str) -> str | None:
    """On one node: None if it sees the driver's `marker` with `expected` content in `directory` and can write
    and delete a file there; otherwise what is wrong, as a clause ("does not see ...")."""
    try:
        fs, root = open_storage(directory)
        path = f"{root.rstrip('/')}/{marker}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            return "does not see the files the driver writes there"
        with fs.open_input_stream(path) as stream:
            if stream.read().decode() != expected:
                return "sees a different folder under the same path"
    except Exception as error:  # noqa: BLE001 - credentials, network, permissions: all mean "unreachable"
        return f"cannot read there ({one_line(error)})"
    own = f"{root.rstrip('/')}/{MARKER_PREFIX}{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(own) as stream:
            stream.write(b"ok")
        fs.delete_file(own)
    except Exception as error:  # noqa: BLE001
        return f"cannot write there ({one_line(error)})"
    return None


def storage_verdict(storage: str, address: str, answers: dict[str, str | None], n_nodes: int,
                    shared: bool = False) -> str | None:
    """The one-sentence reason `storage` cannot serve the cluster, or None when it can.

    `answers` maps a node's description ("10.0.1.7 (GPU node)") to its probe result (None = fine);
    `n_nodes` counts the alive nodes, the driver's included.
    """
    fix = "pass --storage-path s3://bucket/prefix (or a folder mounted at the same path on every node)"
    for node, problem in answers.items():
        if problem:
            return (f"Storage {storage} cannot be used on the {n_nodes}-node Ray cluster at {address}: node {node} "
                    f"{problem}; {fix}.")
    if address != "local" and not is_uri(storage) and n_nodes < 2 and not shared:
        return (f"Storage {storage} is a local folder, and no worker node of the Ray cluster at {address} is up to "
                f"check that it can reach it (autoscaled GPU nodes have their own disks); pass --storage-path "
                f"s3://bucket/prefix, or set {SHARED_ENV}=1 if the folder is a mount shared by every node.")
    return None


def node_label(node: dict[str, Any], driver_node: str) -> str:
    resources = node.get("Resources", {})
    kind = "GPU node" if resources.get("GPU") else "head node" if resources.get("TRAIN_DRIVER") else "node"
    if node["NodeID"] == driver_node:
        kind += ", the driver's"
    return f"{node.get('NodeManagerAddress', '?')} {node['NodeID'][:8]} ({kind})"


def autoscaler_can_add(resource: str, config_path: str = "~/ray_bootstrap_config.yaml") -> bool:
    """True when this machine is the head of a `ray up` cluster whose autoscaler can launch nodes with
    `resource` (e.g. "GPU"), so a sweep may start before any such node is up. `ray up` writes the config,
    resources filled in from the instance types, to `config_path` on the head."""
    import yaml

    path = Path(config_path).expanduser()
    if not path.is_file():
        return False
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    return any(name != head and (node.get("max_workers") or 0) > 0
               and (node.get("resources") or {}).get(resource, 0) > 0 for name, node in types.items())


def fetch_data(source: str, destination: str, threads: int = 16) -> tuple[int, int]:
    """Copy every file under `source` (URI or folder) to `destination`, skipping files already there with the
    same size; return (copied, skipped). An absent or empty source copies nothing."""
    src_fs, src_root = open_storage(source)
    dst_fs, dst_root = pafs.LocalFileSystem(), str(Path(destination).expanduser().absolute())
    entries = src_fs.get_file_info(pafs.FileSelector(src_root, allow_not_found=True, recursive=True))
    files = [e for e in entries if e.type == pafs.FileType.File]
    targets = {e.path: f"{dst_root}/{e.path[len(src_root.rstrip('/')) + 1:]}" for e in files}
    existing = dict(zip(targets.values(), dst_fs.get_file_info(list(targets.values())), strict=True)) if files else {}
    todo = [e for e in files if existing[targets[e.path]].size != e.size]

    def copy(entry: pafs.FileInfo) -> None:
        target = targets[entry.path]
        dst_fs.create_dir(os.path.dirname(target), recursive=True)
        temporary = f"{target}.part-{uuid.uuid4().hex}"
        pafs.copy_files(entry.path, temporary, source_filesystem=src_fs, destination_filesystem=dst_fs)
        os.replace(temporary, target)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(copy, todo))
    return len(todo), len(files) - len(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch-data",
                                help="copy the datasets from $DUALPROMPT_DATA_URI to $DUALPROMPT_DATA_ROOT")
    fetch.add_argument("--source", default=os.environ.get("DUALPROMPT_DATA_URI"))
    fetch.add_argument("--destination", default=os.environ.get("DUALPROMPT_DATA_ROOT"))
    args = parser.parse_args(argv)
    if not args.source or not args.destination:
        print("fetch-data: no --source/$DUALPROMPT_DATA_URI or --destination/$DUALPROMPT_DATA_ROOT; nothing to do.")
        return 0
    try:
        copied, skipped = fetch_data(args.source, args.destination)
    except Exception as error:  # noqa: BLE001 - a setup step: one line, non-zero exit
        print(f"fetch-data: cannot copy {args.source} to {args.destination}: {one_line(error)}.", file=sys.stderr)
        return 1
    print(f"fetch-data: {copied} file(s) copied, {skipped} already present, from {args.source} to {args.destination}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
