"""CelebA, Shakespeare and CIFAR-10 on the truly distributed path, from FS's baseline configs.

For each dataset, on a generated sample in the public format: the shard tool cuts 3 shards; a
distributed shard-mode job (server + 3 client processes, FS's baseline YAML with rounds and model
width shortened on the command line) ends with the same model, bit for bit, as the standalone
simulation of the same shards, while the open() audit shows each client reading only its own
shard and the server only the manifest. FS's own data path (data.splitter / writers) and the
shard tool give every client the same samples for the same seed.
"""
import os

import numpy as np
import pytest
import torch

from harness.jobs import Job
from harness.procs import ROOT, run_script, start_main, wait_all

ROUNDS = 2
SEED = 7
BASELINE = os.path.join(ROOT, "scripts", "example_configs")
# (data.type, baseline YAML, shard-tool options, command-line keys shortening the baseline)
DATASETS = {
    "celeba": ("celeba", "fedavg_convnet2_on_celeba.yaml", [],
               ["model.hidden", "16", "train.local_update_steps", "2",
                "federate.sample_client_num", "3"]),
    "shakespeare": ("shakespeare", "fedavg_lstm_on_shakespeare.yaml", [],
                    ["model.hidden", "16", "model.embed_size", "4", "dataloader.batch_size", "8"]),
    "cifar10": ("CIFAR10@torchvision", "fedavg_convnet2_on_cifar10.yaml",
                ["--strategy", "lda", "--alpha", "0.05", "--splits", "1,0,0"],
                ["model.hidden", "16", "federate.client_num", "3", "dataloader.batch_size", "16",
                 # a distributed server holds no data to evaluate a global model on
                 "federate.make_global_eval", "False"]),
}
GENERATORS = {
    "celeba": ["generate_celeba_sample.py", "--out", "{root}/celeba/raw", "--writers", "6",
               "--samples-per-writer-mean", "6", "--seed", "1"],
    "shakespeare": ["generate_shakespeare_sample.py", "--out", "{root}/shakespeare/raw",
                    "--roles", "6", "--samples-per-role-mean", "12", "--seed", "1"],
    "cifar10": ["generate_cifar10_sample.py", "--out", "{root}", "--per-file", "24",
                "--layout", "py", "--seed", "1"],
}


def _tool(args, **kw):
    return run_script([os.path.join(ROOT, "scripts", "tools", args[0])]
                          + args[1:], **kw)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Every dataset's generated sample under one root, and 3 shards of each (the manifests)."""
    root = str(tmp_path_factory.mktemp("data"))
    manifests = {}
    for name, gen in GENERATORS.items():
        done = _tool([a.format(root=root) for a in gen])
        assert done.returncode == 0, done.stderr
        out = os.path.join(root, "shards", name)
        cut = _tool(["prepare_shards.py", "--dataset", DATASETS[name][0], "--root", root,
                     "--clients", "3", "--seed", str(SEED), "--out", out, "--no-progress"]
                    + DATASETS[name][2])
        assert cut.returncode == 0, cut.stderr
        manifests[name] = os.path.join(out, "manifest.json")
    return root, manifests


class BaselineJob(Job):
    """A shard-mode job whose processes all run FS's baseline YAML for one dataset."""

    def __init__(self, tmp, root, manifest, name):
        data_type, yaml, _, keys = DATASETS[name]
        self.yaml = os.path.join(BASELINE, yaml)
        super().__init__(tmp, root, rounds=ROUNDS, manifest=manifest,
                         common=["use_gpu", "False", "data.type", data_type,
                                 "distributed_data.enabled", "True", "distribute.use", "True",
                                 "distribute.server_host", "127.0.0.1"] + keys)

    def server_args(self, extra=(), port=0):
        return ["--cfg", self.yaml, "federate.mode", "distributed", "distribute.role", "server",
                "distributed_data.manifest", self.manifest, "distribute.server_port", str(port)] \
            + self.common + list(extra)

    def client_args(self, k, extra=(), shard=None):
        shard = shard or os.path.join(os.path.dirname(self.manifest), f"client_{k}")
        return ["--cfg", self.yaml, "federate.mode", "distributed", "distribute.role", "client",
                "distribute.client_host", "127.0.0.1", "distribute.client_port", "0",
                "distribute.server_port", str(self.port), "distribute.client_id", str(k),
                "distributed_data.shard_path", shard, "expname", f"client_{k}"] \
            + self.common + list(extra)


def _audit(tmp, who, watched):
    return {"FS_AUDIT_OPEN_LOG": os.path.join(str(tmp), f"opened_{who}.txt"),
            "FS_AUDIT_ROOT": watched}


def _opened(tmp, who):
    with open(os.path.join(str(tmp), f"opened_{who}.txt")) as f:
        return {line.strip() for line in f if line.strip()}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_shard_job_equals_standalone_and_reads_only_own_shard(name, samples, tmp_path):
    root, manifests = samples
    shards = os.path.dirname(manifests[name])
    watched = os.pathsep.join([root, shards])
    job = BaselineJob(tmp_path, root, manifests[name], name)
    ckpt = str(tmp_path / "distributed.pt")
    procs = [job.server(["federate.save_to", ckpt], env=_audit(tmp_path, "server", watched))]
    procs += [job.client(k, env=_audit(tmp_path, f"client_{k}", watched)) for k in (1, 2, 3)]
    assert wait_all(procs, timeout=300) == [0, 0, 0, 0], job.server_log()[-3000:]

    assert _opened(tmp_path, "server") == {manifests[name]}
    for k in (1, 2, 3):
        own = os.path.join(shards, f"client_{k}") + os.sep
        opened = _opened(tmp_path, f"client_{k}")
        assert opened and all(p.startswith(own) for p in opened), (k, sorted(opened))

    ckpt2 = str(tmp_path / "standalone.pt")
    log = str(tmp_path / "standalone.log")
    proc = start_main(["--cfg", job.yaml] + job.common
                      + ["federate.mode", "standalone", "distributed_data.manifest",
                         manifests[name], "federate.save_to", ckpt2,
                         "outdir", str(tmp_path / "standalone")], log)
    assert wait_all([proc], timeout=300) == [0], open(log).read()[-2000:]
    a, b = torch.load(ckpt, weights_only=True), torch.load(ckpt2, weights_only=True)
    assert a["round"] == b["round"] == ROUNDS
    assert sorted(a["model"]) == sorted(b["model"])
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, differ


def _assert_same_partition(data, manifest_path):
    """Shard client k holds exactly FS's partitions of its writers, in the manifest's order."""
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    from federatedscope.core.data.shard_format import read_manifest
    from federatedscope.core.data.sharding_plan import writer_order
    manifest = read_manifest(manifest_path)
    # FS's partition i is the i-th writer in writer order (CIFAR-10: client_<i>, dealt by lda)
    index = {w: i + 1 for i, w in enumerate(writer_order([w for ws in manifest.writer_ids.values()
                                                          for w in ws]))}
    assert len(data) == len(index) and sorted(data) == sorted(index.values())
    for k in (1, 2, 3):
        shard = DistributedShardLoader(os.path.join(os.path.dirname(manifest_path),
                                                    f"client_{k}"))
        for split in ("train", "val", "test"):
            mine = [getattr(data[index[w]], f"{split}_data") for w in manifest.writer_ids[k]]
            theirs = shard.datasets.get(split)
            y = torch.cat([m.y for m in mine])
            if len(y) == 0:
                assert theirs is None or len(theirs) == 0, (k, split)
                continue
            assert torch.equal(y, theirs.y), (k, split)
            assert torch.equal(torch.cat([m.x for m in mine]), theirs.x), (k, split)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_fs_data_path_and_shard_tool_give_the_same_partition(name, samples):
    """FS's path (data.splitter 'lda' for CIFAR-10, one partition per writer otherwise) and the
    shard tool, same seed: every client's train/val/test samples and labels are identical."""
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.configs.config import global_cfg
    root, manifests = samples
    cfg = global_cfg.clone()
    cfg.merge_from_file(os.path.join(BASELINE, DATASETS[name][1]))
    cfg.merge_from_list(["data.root", root, "data.seed", str(SEED), "data.subsample", "1.0",
                         # every writer a partition; the splitter deals CIFAR-10 to 3 clients
                         "federate.client_num", "3" if name == "cifar10" else "0"])
    data, _ = get_data(cfg)
    _assert_same_partition(data, manifests[name])
    if name == "cifar10":  # client k's train labels are exactly lda(alpha 0.05, SEED)'s part k
        from federatedscope.core.auxiliaries.splitter_builder import build_splitter
        from federatedscope.core.data.dataset_spec import get_spec
        pooled = np.concatenate([ws.y for ws in get_spec("cifar10").iter_writers(root)
                                 if ws.split == "train"])
        parts = build_splitter("lda", 3, [{"alpha": 0.05}]).split_indices(pooled, SEED)
        for k in (1, 2, 3):
            # (writer_split then shuffles each client's samples: compare as multisets)
            assert sorted(data[k].train_data.y.tolist()) == sorted(pooled[parts[k - 1]]), k


def test_consistent_label_distribution_same_in_both_modes(samples, tmp_path):
    """lda with FS's consistent_label_distribution: each client's test labels follow its train
    label shares, in the tool (--consistent-label-distribution) as in FS's path."""
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.configs.config import global_cfg
    root, _ = samples
    out = str(tmp_path / "shards")
    cut = _tool(["prepare_shards.py", "--dataset", "cifar10", "--root", root, "--clients", "3",
                 "--seed", "3", "--out", out, "--no-progress", "--strategy", "lda", "--alpha",
                 "0.05", "--splits", "1,0,0", "--consistent-label-distribution"])
    assert cut.returncode == 0, cut.stderr
    cfg = global_cfg.clone()
    cfg.merge_from_file(os.path.join(BASELINE, DATASETS["cifar10"][1]))
    cfg.merge_from_list(["data.root", root, "data.seed", "3", "federate.client_num", "3",
                         "data.splitter_args", "[{'alpha': 0.05}]",
                         "data.consistent_label_distribution", "True"])
    data, _ = get_data(cfg)
    _assert_same_partition(data, os.path.join(out, "manifest.json"))
    for k in (1, 2, 3):  # a label absent from a client's train set is absent from its test set
        train, test = set(data[k].train_data.y.tolist()), set(data[k].test_data.y.tolist())
        assert test <= train, (k, train, test)


@pytest.mark.parametrize("subsample,strategy", [("1.0", "iid"), ("0.4", "lda")])
def test_femnist_with_a_splitter_same_in_both_modes(femnist_root, tmp_path, subsample, strategy):
    """data.splitter on FEMNIST re-deals the samples of the writers data.subsample keeps, as
    --strategy iid/lda with --subsample does (FS's baseline keeps subsample 0.05)."""
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.configs.config import global_cfg
    out = str(tmp_path / "shards")
    cut = _tool(["prepare_shards.py", "--dataset", "femnist", "--root", femnist_root,
                 "--clients", "4", "--seed", "5", "--out", out, "--no-progress",
                 "--strategy", strategy, "--subsample", subsample, "--alpha", "0.5"])
    assert cut.returncode == 0, cut.stderr
    cfg = global_cfg.clone()
    cfg.merge_from_list(["data.root", femnist_root, "data.seed", "5", "data.subsample", subsample,
                         "data.splitter", strategy, "data.splitter_args",
                         "[{'alpha': 0.5}]" if strategy == "lda" else "[]",
                         "federate.client_num", "4"])
    data, _ = get_data(cfg)
    _assert_same_partition(data, os.path.join(out, "manifest.json"))
    sizes = [len(data[k].train_data) + len(data[k].val_data) + len(data[k].test_data)
             for k in (1, 2, 3, 4)]
    whole = cfg.clone()
    whole.merge_from_list(["data.subsample", "1.0", "data.splitter", "", "federate.client_num",
                           "12"])
    everything = sum(len(d.train_data) + len(d.val_data) + len(d.test_data)
                     for k, d in get_data(whole)[0].items() if k)
    if subsample == "1.0":
        assert sum(sizes) == everything and max(sizes) - min(sizes) <= 3  # iid: near-equal
    else:   # 40 % of the 12 writers (5 kept), not all of them pooled
        assert 0 < sum(sizes) < everything


@pytest.mark.parametrize("extra,message", [
    ([], "--strategy lda --alpha 0.5"),                       # CIFAR-10 has no writers
    (["--strategy", "lda", "--subsample", "0.5"], "drop --subsample"),
    (["--strategy", "lda", "--alpha", "-1"], "alpha"),
])
def test_shard_tool_refuses_cifar10_without_a_usable_splitter(extra, message, samples, tmp_path):
    root, _ = samples
    cut = _tool(["prepare_shards.py", "--dataset", "cifar10", "--root", root, "--clients", "3",
                 "--out", str(tmp_path / "s"), "--no-progress"] + extra)
    assert cut.returncode == 1 and message in cut.stderr, cut.stderr
    assert not os.path.exists(tmp_path / "s" / "manifest.json")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_baseline_config_runs_fs_data_path_standalone(name, samples, tmp_path):
    """FS's baseline YAML as shipped, on FS's data path (no shards), rounds shortened."""
    root, _ = samples
    data_type, yaml, _, keys = DATASETS[name]
    log = str(tmp_path / "run.log")
    proc = start_main(["--cfg", os.path.join(BASELINE, yaml), "use_gpu", "False",
                       "data.root", root, "federate.total_round_num", str(ROUNDS),
                       "model.hidden", "16", "outdir", str(tmp_path / "exp")], log)
    assert wait_all([proc], timeout=300) == [0], open(log).read()[-2000:]
    assert f"finished after {ROUNDS} rounds" in open(log).read()


def test_client_with_a_shard_of_another_dataset_is_refused(samples, tmp_path):
    """A CelebA job; client 2 brings a Shakespeare shard (and says so): the server refuses it
    by the manifest (dataset and sample type), the others finish."""
    root, manifests = samples
    job = BaselineJob(tmp_path, root, manifests["celeba"], "celeba")
    server = job.server(["federate.join_timeout", "3.0", "federate.min_clients_threshold", "2"])
    other = os.path.join(os.path.dirname(manifests["shakespeare"]), "client_2")
    clients = {k: job.client(k) for k in (1, 3)}
    clients[2] = job.launch(job.client_args(2, ["data.type", "shakespeare", "model.type", "lstm",
                                                "model.in_channels", "80",
                                                "model.out_channels", "80",
                                                "criterion.type", "character_loss",
                                                "trainer.type", "nlptrainer"], shard=other),
                            "client_2")
    assert wait_all([clients[2]], timeout=120) == [2], open(job.log("client_2")).read()[-2000:]
    assert "refused by the server: declaration mismatch" in open(job.log("client_2")).read()
    assert wait_all([server, clients[1], clients[3]], timeout=240) == [0, 0, 0]
    log = job.server_log()
    assert "refused client (claimed id 2" in log and "sample type" in log
