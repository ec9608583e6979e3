"""A hostile insider for real-process tests: the project's own client process, with one behaviour
bent before ``main()`` runs. Usage:

    python tests/attack_client.py ATTACK[,ATTACK...] <main.py arguments>

Attacks:
* ``scale_update``  every value of each update x 1e30 (finite, so it passes the shape/NaN checks)
* ``fake_metrics``  reports test_acc 1.0 with test_total 1e12
* ``claim_samples`` claims 10^9 train samples at join and in every update
* ``token=<text>``  joins with this token (e.g. a lone surrogate)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _scale_update() -> None:
    from federatedscope.core.trainers.trainer import GeneralTorchTrainer
    real = GeneralTorchTrainer.train

    def train(self, seed):
        size, state, metrics = real(self, seed)
        return size, {k: (v * 1e30 if v.is_floating_point() else v) for k, v in state.items()}, metrics
    GeneralTorchTrainer.train = train


def _fake_metrics() -> None:
    from federatedscope.core.trainers.trainer import GeneralTorchTrainer

    def evaluate(self, split):
        return {f"{split}_acc": 1.0, f"{split}_total": 10 ** 12, f"{split}_loss": 0.0,
                f"{split}_avg_loss": 0.0, f"{split}_correct": 10 ** 12}
    GeneralTorchTrainer.evaluate = evaluate


def _claim_samples() -> None:
    from federatedscope.core.trainers.trainer import GeneralTorchTrainer
    real_train, real_num = GeneralTorchTrainer.train, GeneralTorchTrainer.num_samples

    def num_samples(self, split):
        return 10 ** 9 if split == "train" else real_num(self, split)

    def train(self, seed):
        _, state, metrics = real_train(self, seed)
        return 10 ** 9, state, metrics
    GeneralTorchTrainer.num_samples = num_samples
    GeneralTorchTrainer.train = train


def _token(value: str) -> None:
    from federatedscope.core.workers.client import Client
    real = Client.join_message

    def join_message(self):
        msg = real(self)
        msg.content["token"] = value
        return msg
    Client.join_message = join_message


def main() -> None:
    attacks, argv = sys.argv[1], sys.argv[2:]
    for attack in attacks.split(","):
        name, _, arg = attack.partition("=")
        {"scale_update": _scale_update, "fake_metrics": _fake_metrics,
         "claim_samples": _claim_samples}.get(name, lambda: _token(arg.encode().decode(
             "unicode_escape", "surrogatepass")))()
    from federatedscope import main as fs_main
    sys.argv = [fs_main.__file__] + argv
    code = fs_main.main(argv)
    import logging
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
