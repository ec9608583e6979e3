"""Admission in shard mode, in-process: what the server checks of a declaration, at join, at
re-declaration and before each aggregation; what a lenient server lets through and says."""
import json
import os
import shutil

import pytest

from federatedscope.core.data.shard_format import ShardDeclaration, load_manifest
from server_harness import Harness, quiet


def _decl(entry, **over) -> dict:
    d = ShardDeclaration(entry.client_id, dict(entry.num_samples), entry.fingerprint,
                         list(entry.label_hist), entry.sample_type).to_dict()
    d.update(over)
    return d


@pytest.fixture()
def manifest(femnist_shards, tmp_path):
    """A private copy of the session's manifest (tests may rewrite it)."""
    path = tmp_path / "shards" / "manifest.json"
    os.makedirs(path.parent)
    shutil.copy(femnist_shards, path)
    return str(path)


def _h(tmp_path, manifest, strict=True, **kw):
    return Harness(tmp_path, "federate.total_round_num", 1, "distributed_data.enabled", True,
                   manifest=load_manifest(manifest), strict=strict, manifest_path=manifest,
                   sample_type="uint8[28,28]", **kw)


def test_matching_declaration_is_admitted_with_its_manifest_count(tmp_path, manifest):
    h = _h(tmp_path, manifest)
    e = load_manifest(manifest)[1]
    h.join(1, declaration=_decl(e))
    assert 1 in h.server.clients and h.admission.verified(1)
    assert h.admission.counts(1)["train"] == e.num_samples["train"]


@pytest.mark.parametrize("over", [
    {"num_samples": {"train": 10 ** 6, "val": 1, "test": 1}},
    {"fingerprint": "0" * 64},
    {"sample_type": "float32[3,224,224]"},
])
def test_strict_server_refuses_a_lie_and_tells_the_peer_only_the_class(tmp_path, manifest, caplog, over):
    quiet(caplog)
    h = _h(tmp_path, manifest)
    e = load_manifest(manifest)[1]
    fixed = dict(over)
    if "num_samples" in fixed:
        fixed["label_hist"] = [0] * (len(e.label_hist) - 1) + [10 ** 6]
    h.join(1, declaration=_decl(e, **fixed))
    assert h.refusals() == ["declaration mismatch"]
    assert 1 not in h.server.clients
    assert "client 1:" in caplog.text                         # the detail is in the server log


def test_lenient_server_warns_and_does_not_trust_the_count(tmp_path, manifest, caplog):
    quiet(caplog)
    h = _h(tmp_path, manifest, strict=False)
    e = load_manifest(manifest)[1]
    h.join(1, declaration=_decl(e, fingerprint="0" * 64))
    assert 1 in h.server.clients and not h.admission.verified(1)
    assert "strict_check is off: accepted" in caplog.text


def test_unknown_id_and_missing_declaration_are_refused(tmp_path, manifest):
    h = _h(tmp_path, manifest)
    h.join(99)
    h.join(2)                                                  # no declaration
    assert h.refusals() == ["unknown id", "declaration mismatch"]


def test_redeclaration_is_checked_and_a_refresh_error_is_logged(tmp_path, manifest, caplog):
    quiet(caplog)
    h = _h(tmp_path, manifest)
    entries = load_manifest(manifest)
    for c in sorted(entries):
        h.join(c, declaration=_decl(entries[c]))
    h.redeclare(1, _decl(entries[1]), refresh_error="train.pt: size 12 != meta 99")
    assert "could not load its changed shard" in caplog.text and h.server.clients[1].online
    h.redeclare(2, _decl(entries[2], fingerprint="1" * 64))
    assert not h.server.clients[2].online and h.refusals() == ["declaration mismatch"]


def test_a_manifest_changed_on_disk_is_reread_before_aggregation(tmp_path, manifest, caplog):
    quiet(caplog)
    h = _h(tmp_path, manifest)
    entries = load_manifest(manifest)
    for c in sorted(entries):
        h.join(c, declaration=_decl(entries[c]))
    with open(manifest) as f:
        doc = json.load(f)
    doc["clients"][0]["fingerprint"] = "2" * 64               # the shards were re-cut
    with open(manifest, "w") as f:
        json.dump(doc, f)
    os.utime(manifest, ns=(1, 1))
    g = h.global_state()
    for c in sorted(entries):
        h.update(c, 0, h.shifted(1.0, g), size=entries[c].num_samples["train"])
    assert "changed on disk; re-read it" in caplog.text
    assert "rejected update of client #1" in caplog.text


def test_a_shard_server_built_from_config_checks_the_sample_type(tmp_path, manifest):
    """The wiring, not just the check: get_data -> the runner's Admission refuses a wrong type."""
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.workers.admission import Admission
    from server_harness import make_cfg
    cfg = make_cfg(tmp_path, "distributed_data.enabled", True, "distributed_data.manifest", manifest)
    data, _ = get_data(cfg)
    admission = Admission.from_config(cfg, data.manifest, data.path, 3)
    e = load_manifest(manifest)[1]
    bad = admission.admit({"client_id": 1, "declaration": _decl(e, sample_type="float32[3,224,224]")},
                          set())
    assert not bad.accepted and "sample type" in bad.reason
    assert admission.admit({"client_id": 1, "declaration": _decl(e)}, set()).accepted
