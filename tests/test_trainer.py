import copy
import json
import os

import torch

from federatedscope.core.trainers.optimizer import PlainSGD
from harness.procs import start_main, wait_all, ROOT


def test_plain_sgd_matches_torch_sgd_bit_for_bit():
    torch.manual_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    m2 = copy.deepcopy(m1)
    o1 = PlainSGD(m1.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for m, o in ((m1, o1), (m2, o2)):
        for _ in range(5):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_standalone_accuracy_improves(femnist_root, tmp_path):
    cfg = os.path.join(ROOT, "scripts", "example_configs", "femnist.yaml")
    out = tmp_path / "exp"
    proc = start_main(["--cfg", cfg, "data.root", femnist_root, "data.subsample", "1.0",
                       "federate.total_round_num", "4", "eval.freq", "1", "model.hidden", "128",
                       "federate.sample_client_rate", "-1.0", "train.local_update_steps", "1",
                       "outdir", str(out)], str(tmp_path / "run.log"))
    assert wait_all([proc], timeout=300) == [0], open(tmp_path / "run.log").read()[-2000:]
    (log,) = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f == "eval_results.log"]
    lines = [json.loads(line) for line in open(log)]
    accs = [line["Results_weighted_avg"]["test_acc"] for line in lines if not line.get("Final")]
    assert len(accs) == 4
    assert accs[-1] > accs[0] and accs[-1] > 3 / 62, accs   # learning, clearly above chance
    assert lines[-1]["Final"] is True
