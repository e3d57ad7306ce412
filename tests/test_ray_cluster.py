"""`annotate --backend ray --ray-address` on a real Ray cluster: a head and two worker nodes,
each its own raylet and object store (Ray's `cluster_utils.Cluster`), all on 127.0.0.1. The
runs are separate driver processes, as a user's are; one of them loses a node mid-run.
Skipped when Ray is not installed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_ray import ray  # skips this module too where the ray extra is not installed
from tests.test_runs import (
    ROOT,
    _docs,
    _lines,
    _parts_committed,
    _run,
    assert_same_documents,
    part_files,
    read_manifests,
)

#: Two logical CPUs a node: of three tagger actors (one CPU each) a node holds two at most, so
#: a run spans nodes (Ray spreads them, one a node as a rule); and all three still fit on the
#: two nodes left after one is lost.
NODE = {
    "num_cpus": 2,
    "node_ip_address": "127.0.0.1",
    "include_dashboard": False,
    "dashboard_agent_listen_port": None,  # a free port, not Ray's fixed one
}

#: Ray turns a 127.0.0.1 address into the machine's own address before it connects, and the
#: nodes listen on 127.0.0.1 only: this (Ray's single-machine setting) keeps the driver local.
DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

FILES, DOCS, BAD_EVERY = 6, 300, 61  # 4 bad records a file
TIMEOUT = 300  # seconds a run may take here before the test gives up on it


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    for _ in range(2):
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("cluster-inputs")
    return [
        str(_docs(folder / f"{i}.jsonl", DOCS, bad_every=BAD_EVERY, seed=i)) for i in range(FILES)
    ]


def _args(inputs: list[str], model: Path, out: Path) -> list[str]:
    options = "--format jsonl --part-size 20 --on-error skip".split()
    return [*inputs, "-m", str(model), "-o", f"{out}/", *options]


@pytest.fixture(scope="module")
def reference(inputs, tiny_model, tmp_path_factory) -> list[dict]:
    """The documents of a local run, in input order."""
    out = tmp_path_factory.mktemp("cluster-reference") / "out"
    assert _run(*_args(inputs, tiny_model, out)).exit_code == 3
    assert read_manifests(out)[0]["skipped"] == FILES * (DOCS // BAD_EVERY)
    return _lines(part_files(out))


def _start(cluster, args: list[str], log: Path) -> subprocess.Popen:
    """A driver process of its own, as a user's run is."""
    with log.open("a") as stderr:  # a file, not a pipe that Ray's warnings could fill
        return subprocess.Popen(
            [sys.executable, "-m", "annotator", "annotate", *args]
            + ["--backend", "ray", "--workers", "3", "--ray-address", cluster.address],
            env={**os.environ, "PYTHONPATH": str(ROOT), **DRIVER_ENV},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _taggers(cluster) -> dict[str, dict]:
    """Every tagger actor the cluster has had: node, state, restarts; by actor id."""
    return {
        actor_id: actor
        for actor_id, actor in cluster.global_state.actor_table(None).items()
        if "_Tagger" in actor.get("ActorClassName", "")
    }


def _busy_workers(cluster, before: set[str]) -> list:
    """The worker nodes (not the head, where the driver is) with a live tagger of this run."""
    busy = {
        actor["Address"]["NodeID"]
        for key, actor in _taggers(cluster).items()
        if key not in before and actor["State"] == "ALIVE"
    }
    return [node for node in cluster.worker_nodes if node.node_id in busy]


def _wait(condition, run: subprocess.Popen, log: Path):
    """`condition()`'s first true value; the run must not end first."""
    deadline = time.monotonic() + TIMEOUT
    while not (value := condition()):
        assert run.poll() is None, f"the run ended first: {log.read_text()}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    return value


def _node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


def _assert_run_is_whole(out: Path, reference: list[dict]) -> None:
    """Every document once, in input order, as a local run writes it; every bad record
    counted once; no file in the output that the manifest does not name."""
    documents = _lines(part_files(out))
    keys = [(d["source"], d["doc_id"]) for d in documents]
    assert len(keys) == len(set(keys)) == FILES * DOCS  # 0 duplicated, 0 lost
    assert_same_documents(documents, reference)
    [manifest] = read_manifests(out)
    assert manifest["complete"] and manifest["skipped"] == FILES * (DOCS // BAD_EVERY)
    named = {part["file"] for part in manifest["parts"]} | {"manifest.json", ".annotator.lock"}
    assert {path.name for path in out.iterdir()} <= named


def test_a_three_node_run_writes_the_rows_of_a_local_run(
    cluster, inputs, tiny_model, reference, tmp_path
):
    before = set(_taggers(cluster))
    out, log = tmp_path / "out", tmp_path / "stderr.log"
    run = _start(cluster, _args(inputs, tiny_model, out), log)
    assert run.wait(TIMEOUT) == 3, log.read_text()  # 3: finished, bad records skipped
    _assert_run_is_whole(out, reference)
    nodes = {a["Address"]["NodeID"] for key, a in _taggers(cluster).items() if key not in before}
    assert len(nodes) >= 2 and nodes <= _node_ids(cluster)


def test_a_node_lost_mid_run_loses_and_duplicates_no_record(
    cluster, inputs, tiny_model, reference, tmp_path
):
    """Ray restarts the lost node's actor on another node and runs its lost work again: the
    run completes. Had Ray given up, it would stop with one line, and --resume would complete
    it: either way, every document exactly once."""
    before = set(_taggers(cluster))
    out, log = tmp_path / "out", tmp_path / "stderr.log"
    args = _args(inputs, tiny_model, out)
    run, lost = _start(cluster, args, log), None
    try:
        _wait(lambda: _parts_committed(out) >= 1, run, log)
        # the driver held still (it cannot finish meanwhile) until a worker node has a
        # tagger of this run; the cluster works on meanwhile, blocks pile up in its stores
        os.kill(run.pid, signal.SIGSTOP)
        try:
            lost = _wait(lambda: _busy_workers(cluster, before), run, log)[0]
            cluster.remove_node(lost)  # its raylet, object store, actors and tasks
        finally:
            os.kill(run.pid, signal.SIGCONT)
        code = run.wait(TIMEOUT)
    finally:
        run.kill()
        if lost is not None:
            cluster.add_node(**NODE)  # three nodes again, for whatever runs next
    stderr = log.read_text()
    assert "Traceback" not in stderr, stderr
    if code == 3:  # completed: the lost actor ran again elsewhere
        restarted = [a for key, a in _taggers(cluster).items() if key not in before]
        assert any(a["NumRestarts"] >= 1 for a in restarted), restarted
    else:  # stopped with one clear line; --resume (a node back in) completes it
        assert code == 1 and "--resume" in stderr.splitlines()[-1], stderr
        assert _start(cluster, [*args, "--resume"], log).wait(TIMEOUT) == 3, log.read_text()
    _assert_run_is_whole(out, reference)


def test_a_worker_lost_for_good_stops_the_run_with_one_line_and_the_resume_hint():
    """What the driver says when Ray gives up on lost work (the cluster tests above do not
    get that far: Ray redoes their lost work)."""
    from annotator.runs.ray import _lost_worker_error

    try:
        try:
            raise ray.exceptions.NodeDiedError("node 1f2e is dead\n(Ray's details)")
        except ray.exceptions.RayError as exc:
            raise RuntimeError("the Ray Data execution failed") from exc
    except RuntimeError as exc:
        error = _lost_worker_error(ray, exc)
    assert error is not None and error.exit_code == 1
    assert "\n" not in str(error) and "NodeDiedError: node 1f2e is dead" in str(error)
    assert "--resume" in str(error)
    assert _lost_worker_error(ray, RuntimeError("a bug")) is None  # a traceback, as bugs get
