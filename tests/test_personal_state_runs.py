"""Personal state (FedBN's layers, Ditto's personal model) belongs to one job. FS's recipes loop
seeds into one outdir (``run_femnist_fedbn.sh``): each run must start from the initial model, as
in FS, while a client restarted inside a job still gets its own state back (test_admission_client)."""
import json
import os

import torch

from harness.fs_flow import fs_run


def _run(root: str, outdir: str, *opts) -> dict:
    """One standalone job over 4 of the sample's writers, in this process; its final model."""
    ckpt = os.path.join(outdir, f"final_{len(os.listdir(outdir)) if os.path.isdir(outdir) else 0}.pt")
    _, code = fs_run([
        "federate.mode", "standalone", "distribute.use", "False", "distributed_data.enabled",
        "False", "data.root", root, "data.subsample", "1.0", "federate.client_num", "4",
        "federate.total_round_num", "3", "train.batch_or_epoch", "batch",
        "train.local_update_steps", "2", "eval.freq", "3", "outdir", outdir, "expname", "rep",
        "federate.save_to", ckpt, "verbose", "0"] + list(opts))
    assert code == 0
    return torch.load(ckpt, weights_only=True)["model"]


def _restored_lines(outdir: str) -> list:
    return [line for d, _, fs in os.walk(outdir) for f in fs if f.endswith(".log")
            for line in open(os.path.join(d, f)) if "restored its personal state" in line]


def test_seeds_looped_into_one_outdir_are_independent_runs(femnist_root, tmp_path):
    """FedBN, seed 2 after seed 1 in the same outdir: the same final model as seed 2 alone (the
    first run's saved BN layers are not loaded), and the state files are this run's."""
    fedbn = ["personalization.local_param", "['bn', 'norms']", "model.hidden", "64"]
    shared, alone = str(tmp_path / "shared"), str(tmp_path / "alone")
    first = _run(femnist_root, shared, "seed", "1", *fedbn)
    second = _run(femnist_root, shared, "seed", "2", *fedbn)
    reference = _run(femnist_root, alone, "seed", "2", *fedbn)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(second[k], reference[k]) for k in reference)
    assert _restored_lines(shared) == []
    saved = torch.load(os.path.join(shared, "rep", "client_state", "client_1.pt"),
                       weights_only=True)
    assert isinstance(saved["job_id"], str) and len(saved["job_id"]) == 16
    assert saved["state"] and all(k.startswith("bn") for k in saved["state"])


def test_a_new_run_with_another_model_does_not_load_the_old_personal_model(femnist_root,
                                                                           tmp_path):
    """Ditto's personal model is the whole model: a second run with model.hidden changed used
    to stop with a size mismatch while loading the first run's file."""
    out = str(tmp_path / "exp")
    _run(femnist_root, out, "federate.method", "Ditto", "model.hidden", "32")
    final = _run(femnist_root, out, "federate.method", "Ditto", "model.hidden", "48")
    assert final["fc1.weight"].shape[0] == 48
    assert _restored_lines(out) == []
    lines = [json.loads(line) for d, _, fs in os.walk(out) for f in fs
             if f == "eval_results.log" for line in open(os.path.join(d, f))]
    assert sum(1 for line in lines if line.get("Final")) == 2
