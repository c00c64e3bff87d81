"""Cluster mode on a real local Ray cluster (a head and two worker nodes on loopback, three
shards with two copies each): the galleries sharded over the nodes answer exactly as one
server holding the same gallery, for faces, fingers, irises and subjects with all three;
two front-ends joined to one cluster enrol the same new person once; after a node is added,
a rebalance moves copies onto it while searches answer, and answers stay equal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tambua.test_finger_service import fcj  # noqa: F401 - fixture
from tests.tambua.test_iris_service import _eye
from tests.tambua.test_server import REPO, Server, face
from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_dashboard import exported, metric_names, panels


@pytest.fixture(scope="module")
def servers(ray_cluster, tmp_path_factory, models):
    """One server on its own, and two front-ends of the cluster."""
    root = tmp_path_factory.mktemp("cluster")
    single = Server(root / "single")
    fronts = [Server(root / f"front{i}", env={"TAMBUA_CLUSTER": ray_cluster.address, "TAMBUA_SHARDS": "3",
                                              "TAMBUA_REPLICAS": "2"}, args=("--metrics-port", str(METRICS[i])))
              for i in range(2)]
    started = []
    try:
        for s in (single, *fronts):
            s.start()
            started.append(s)
        yield single, fronts
    finally:
        for s in started:
            s.stop()


PROBES: dict = {}  # the equality test's probes, searched again after the rebalance


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS = [_free_local_port(), _free_local_port()]


def _templates(stub, samples: list[pb.Sample]) -> list[pb.Sample]:
    """The samples as template bytes (extracted once, so both galleries hold the same)."""
    out = stub.Extract(pb.ExtractRequest(samples=samples), timeout=120).templates
    return [pb.Sample(modality=t.modality, position=t.position, template=t.data) for t in out]


def _finger(folder, impression: int, position: int) -> pb.Sample:
    return pb.Sample(modality=pb.FINGER, position=position, image=(folder / f"{folder.name}_{impression}.png").read_bytes())


def _eyes(irises) -> list[int]:
    """MMU1 persons with both eyes."""
    folders = {p.name for p in (irises / "mmu1").iterdir()}
    return sorted(int(n.split("_")[0]) for n in folders if n.endswith("_right") and n.replace("right", "left") in folders)


def _answer(stub, samples, partition="", within=()):
    r = stub.Identify(pb.IdentifyRequest(samples=samples, partition=partition, max_fpir=1.0, max_candidates=10,
                                         within_subject_ids=list(within)), timeout=60)
    return [(c.subject_id, round(c.score, 9), c.fpir) for c in r.candidates]


def test_identify_through_the_shards_equals_one_server(servers, orl, irises, fcj):  # noqa: F811
    single, (front, _) = servers
    x = single.stub
    eyes = _eyes(irises)
    gallery = {}
    for person in range(1, 15):  # faces
        gallery[f"F{person}"] = ("", _templates(x, [face(orl, person, 1)]))
    for n in range(6):  # two fingers each
        gallery[f"P{n}"] = ("", _templates(x, [_finger(fcj[2 * n], 1, 1), _finger(fcj[2 * n + 1], 1, 2)]))
    for person in eyes[:6]:  # both irises
        gallery[f"I{person}"] = ("", _templates(x, [_eye(irises, person, "right", 0), _eye(irises, person, "left", 0)]))
    for n in range(3):  # face, finger and irises, in another partition
        gallery[f"M{n}"] = ("camp-b", _templates(x, [face(orl, 20 + n, 1), _finger(fcj[20 + n], 1, 3),
                                                     _eye(irises, eyes[10 + n], "right", 0)]))
    for stub in (single.stub, front.stub):
        for sid, (partition, samples) in gallery.items():
            r = stub.Enroll(pb.EnrollRequest(subject_id=sid, partition=partition, samples=samples, force=True),
                            timeout=120)
            assert r.outcome == pb.EnrollResponse.ENROLLED, sid
    probes = {
        "face": ("", _templates(x, [face(orl, 3, 2)])),
        "stranger": ("", _templates(x, [face(orl, 35, 1)])),
        "fingers": ("", _templates(x, [_finger(fcj[4], 2, 1), _finger(fcj[5], 2, 2)])),
        "finger, position unknown": ("", _templates(x, [_finger(fcj[6], 3, 0)])),
        "irises": ("", _templates(x, [_eye(irises, eyes[1], "right", 1), _eye(irises, eyes[1], "left", 1)])),
        "all three": ("camp-b", _templates(x, [face(orl, 21, 2), _finger(fcj[21], 2, 3),
                                               _eye(irises, eyes[11], "right", 1)])),
    }
    for name, (partition, samples) in probes.items():
        alone, sharded = _answer(single.stub, samples, partition), _answer(front.stub, samples, partition)
        assert alone == sharded, name
        assert alone, name  # with max_fpir 1 every scored subject is listed: the lists hold something
    assert _answer(front.stub, probes["face"][1])[0][0] == "F3"
    assert _answer(front.stub, probes["all three"][1], "camp-b")[0][0] == "M1"
    within = ("F1", "F3", "P2")
    assert _answer(single.stub, probes["face"][1], within=within) == _answer(front.stub, probes["face"][1],
                                                                               within=within)
    PROBES.update(probes)
    for stub in (single.stub, front.stub):  # 1:1 goes to the subject's own shard
        v = stub.Verify(pb.VerifyRequest(subject_id=f"I{eyes[1]}", samples=probes["irises"][1]), timeout=60)
        assert v.match
    sizes = [dict(s.Stats(pb.StatsRequest(), timeout=30).templates_by_model) for s in (single.stub, front.stub)]
    assert sizes[0] == sizes[1]
    # Per shard copy on the front-end's /metrics: every subject held twice (two copies),
    # searches counted, no shard without a live copy.
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS[0]}/metrics", timeout=30).read().decode()
    samples = [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]
    held = [v for name, labels, v in samples if name == "tambua_shard_subjects"]
    assert len(held) == 6 and sum(held) == 2 * len(gallery)
    assert sum(v for name, _, v in samples if name == "tambua_shard_searches_total") > 0
    assert [v for name, _, v in samples if name == "tambua_cluster_unserved_shards"] == [0]
    # Every metric the dashboard's cluster panels read is exported here, and the others too.
    wanted = metric_names(t["expr"] for panel in panels() for t in panel["targets"])
    assert wanted <= exported(text), sorted(wanted - exported(text))
    # The duplicate audit through the shards (each searches the whole batch over its part at
    # once) finds what one server finds: a person enrolled again under another id.
    again = _templates(x, [face(orl, 3, 3)])
    for stub in (single.stub, front.stub):
        # Loaded without deduplication (force would link it to F3: decided different people).
        r = stub.Enroll(pb.EnrollRequest(subject_id="D3", samples=again, skip_dedup=True), timeout=120)
        assert r.outcome == pb.EnrollResponse.ENROLLED
    audits = [[(list(c.subject_ids), [(list(e.subject_ids), round(e.score, 6), round(e.fpir, 9)) for e in c.pairs])
               for c in stub.AuditDuplicates(pb.AuditDuplicatesRequest(), timeout=600).clusters]
              for stub in (single.stub, front.stub)]
    assert audits[0] == audits[1] and any({"D3", "F3"} <= set(ids) for ids, _ in audits[0]), audits[0]


def test_two_front_ends_enrol_one_new_person_once(servers, orl):
    _, fronts = servers
    for person in (36, 37, 38):
        samples = _templates(fronts[0].stub, [face(orl, person, 1)])
        answers, barrier = [], threading.Barrier(2)

        def enrol(stub, sid):
            barrier.wait()
            answers.append((stub.Enroll(pb.EnrollRequest(subject_id=sid, samples=samples), timeout=120).outcome, sid))

        threads = [threading.Thread(target=enrol, args=(f.stub, f"NEW{person}-{i}")) for i, f in enumerate(fronts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(o for o, _ in answers) == sorted([pb.EnrollResponse.ENROLLED, pb.EnrollResponse.DUPLICATE])
        # Acknowledged means searchable at once from every front-end (each reads the shards itself).
        enrolled = next(sid for o, sid in answers if o == pb.EnrollResponse.ENROLLED)
        found = [f.stub.Identify(pb.IdentifyRequest(samples=samples, max_candidates=1), timeout=60).candidates
                 for f in fronts]
        assert [c[0].subject_id for c in found] == [enrolled, enrolled], person
        assert found[0][0].fpir == found[1][0].fpir


def test_one_id_names_one_subject_cluster_wide(servers, orl):
    _, fronts = servers
    a, b = (_templates(fronts[0].stub, [face(orl, p, 1)]) for p in (39, 40))
    fronts[0].stub.Enroll(pb.EnrollRequest(subject_id="SAME-ID", samples=a), timeout=120)
    with pytest.raises(grpc.RpcError) as e:
        fronts[1].stub.Enroll(pb.EnrollRequest(subject_id="SAME-ID", samples=b), timeout=120)
    assert e.value.code() is grpc.StatusCode.ALREADY_EXISTS
    got = fronts[1].stub.GetSubject(pb.SubjectRequest(subject_id="SAME-ID"), timeout=30)
    assert got.subject_id == "SAME-ID"


def test_a_case_held_through_one_front_end_is_decided_through_the_other(servers, orl):
    """Cases live with the coordinator's store: held at one front-end, listed, shown and
    decided at the other; the enrolment the decision makes is found from both."""
    _, fronts = servers
    assert fronts[0].stub.Enroll(pb.EnrollRequest(subject_id="CASE-A", samples=[face(orl, 32, 1)]),
                                 timeout=120).outcome == pb.EnrollResponse.ENROLLED
    held = fronts[1].stub.Enroll(pb.EnrollRequest(subject_id="CASE-B", samples=[face(orl, 32, 2)], hold=True),
                                 timeout=120)
    assert held.outcome == pb.EnrollResponse.DUPLICATE and held.case_id
    assert held.case_id in [c.case_id for c in fronts[0].stub.ListCases(pb.ListCasesRequest(), timeout=30).cases]
    case = fronts[0].stub.GetCase(pb.GetCaseRequest(case_id=held.case_id), timeout=30)
    assert case.candidates[0].subject_id == "CASE-A" and [t.modality for t in case.templates] == [pb.FACE]
    decided = fronts[0].stub.DecideCase(pb.DecideCaseRequest(case_id=held.case_id, verdict=pb.DIFFERENT_PEOPLE,
                                                             reason="twins"), timeout=60)
    assert decided.decision.subject_id == "CASE-B"
    for front in fronts:
        found = front.stub.Identify(pb.IdentifyRequest(samples=[face(orl, 32, 2)], max_fpir=1.0), timeout=60)
        assert "CASE-B" in [c.subject_id for c in found.candidates]
        assert front.stub.GetSubject(pb.SubjectRequest(subject_id="CASE-B"), timeout=30).encounters == 0


def test_a_rebalance_onto_a_new_node_keeps_answers_and_answers_throughout(servers, ray_cluster):
    _, (front, _) = servers
    assert PROBES, "runs after the equality test, on its gallery"
    before = {name: _answer(front.stub, samples, partition) for name, (partition, samples) in PROBES.items()}
    ray_cluster.add_worker()
    stop, answered, errors = threading.Event(), [], []

    def search():
        while not stop.is_set():
            try:
                answered.append(_answer(front.stub, PROBES["face"][1]) == before["face"])
            except grpc.RpcError as e:
                errors.append(e.code())

    searching = threading.Thread(target=search)
    searching.start()
    try:
        r = subprocess.run([sys.executable, "-m", "tambua.cli", "cluster", "rebalance", "--address",
                            ray_cluster.address, "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        searching.join()
    assert r.returncode == 0, r.stderr
    moves = json.loads(r.stdout)["moves"]
    state = json.loads(subprocess.run([sys.executable, "-m", "tambua.cli", "cluster", "status", "--address",
                                       ray_cluster.address, "--json"], cwd=REPO, capture_output=True, text=True,
                                      timeout=120).stdout)
    per_node = sorted(n["copies"] for n in state["nodes"] if n["alive"])
    assert moves and per_node == [1, 1, 2, 2], (moves, per_node)  # 6 copies over 4 nodes
    assert {m["to"] for m in moves} == {n["node"] for n in state["nodes"] if n["copies"] == 1} & {m["to"] for m in moves}
    assert not errors and answered and all(answered), (errors, answered.count(False))
    after = {name: _answer(front.stub, samples, partition) for name, (partition, samples) in PROBES.items()}
    assert after == before  # (not the single server's now: the tests since enrolled more people here)


def _state(address: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "cluster", "status", "--address", address, "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {})


def test_a_restarted_coordinator_takes_back_the_running_copies(servers, ray_cluster, orl):
    """SIGKILL of the coordinator's process after copies moved: Ray restarts it, it adopts
    the copies that run (the moved ones under their new names), starts no others, and the
    front-ends enrol and search through it as before."""
    _, (front, other) = servers
    assert PROBES, "runs after the rebalance test"
    before = {name: _answer(front.stub, samples, partition) for name, (partition, samples) in PROBES.items()}
    _, state = _state(ray_cluster.address)
    copies = sorted((c["shard"], c["copy"], c["pid"]) for c in state["shards"])
    os.kill(state["coordinator_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        code, after_state = _state(ray_cluster.address)
        if code == 0 and after_state.get("coordinator_pid") not in (None, state["coordinator_pid"]):
            break
        assert time.monotonic() < deadline, after_state
        time.sleep(0.5)
    assert sorted((c["shard"], c["copy"], c["pid"]) for c in after_state["shards"]) == copies
    listed = subprocess.run([sys.executable, "-c", "import json, sys, ray; ray.init(address=sys.argv[1], "
                             "log_to_driver=False); print(json.dumps(ray.util.list_named_actors(all_namespaces=True)))",
                             ray_cluster.address], cwd=REPO, capture_output=True, text=True, timeout=120)
    shard_actors = [a["name"] for a in json.loads(listed.stdout.splitlines()[-1]) if a["name"].startswith("tambua-shard-")]
    assert len(shard_actors) == len(copies), shard_actors  # none started anew, none left over
    after = {name: _answer(front.stub, samples, partition) for name, (partition, samples) in PROBES.items()}
    assert after == before
    samples = _templates(front.stub, [face(orl, 35, 1)])
    assert front.stub.Enroll(pb.EnrollRequest(subject_id="AFTER-RESTART", samples=samples),
                             timeout=120).outcome == pb.EnrollResponse.ENROLLED
    found = other.stub.Identify(pb.IdentifyRequest(samples=samples, max_candidates=1), timeout=60).candidates
    assert found[0].subject_id == "AFTER-RESTART"
