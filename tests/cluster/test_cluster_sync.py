"""Site sync works unchanged with a cluster on one side: a field server and a country
front-end joined to a Ray cluster exchange signed, sealed bundles both ways; an import
through the cluster is deduplicated against its sharded galleries (a person enrolled at
both sites is flagged CROSS_SITE_DUPLICATE) and applied once however often it arrives."""

from __future__ import annotations

from tests.tambua.test_server import Server, face
from tests.tambua.test_sync import Site, identity, ok
from tambua.v1 import tambua_pb2 as pb


def test_a_field_site_and_a_clustered_country_server_sync_both_ways(ray_cluster, tmp_path, orl, models):
    field_dir, country_dir = tmp_path / "field", tmp_path / "country"
    ids = {s: identity(d, s, tmp_path) for s, d in [("field-1", field_dir), ("country", country_dir)]}
    ok("sync", "peer", "add", str(ids["country"]), "--data-dir", str(field_dir))
    ok("sync", "peer", "add", str(ids["field-1"]), "--data-dir", str(country_dir))
    field = Site(Server(field_dir))
    country = Site(Server(country_dir, env={"TAMBUA_CLUSTER": ray_cluster.address, "TAMBUA_SHARDS": "2"}))
    field.server.start()
    country.server.start()
    try:
        for person in (1, 2, 3):
            field.enrol(f"F{person}", orl, person, 1)
        country.enrol("C9", orl, 9, 1)
        field.enrol("F9", orl, 9, 2)  # the same person, registered at both sites
        field.export("country", tmp_path / "b1.tmb")
        first = country.imports(tmp_path / "b1.tmb", tmp_path / "a1.tmb")
        assert first["applied"] == 4 and [(f["subject_id"], f["kind"], f["candidates"]) for f in first["flagged"]] \
            == [("F9", "CROSS_SITE_DUPLICATE", ["C9"])]
        again = country.imports(tmp_path / "b1.tmb")
        assert (again["applied"], again["already"]) == (0, 4)
        assert country.subjects() == 5 and all(country.has(f"F{p}") for p in (1, 2, 3, 9))
        found = country.stub.Identify(pb.IdentifyRequest(samples=[face(orl, 2, 3)]), timeout=60).candidates
        assert found[0].subject_id == "F2"
        assert field.imports(tmp_path / "a1.tmb") == {"ack_from": "country", "acked_seq": 4}
        # The other way: the cluster's own enrolment (and what it relays never goes back).
        country.export("field-1", tmp_path / "b2.tmb")
        back = field.imports(tmp_path / "b2.tmb")
        assert back["applied"] >= 1 and field.has("C9")
        assert field.subjects() == 5  # C9 arrived; F1-F3 and F9 were not sent back
        assert country.status()["peers"][0]["applied_seq"] == 4
    finally:
        field.server.stop()
        country.server.stop()
