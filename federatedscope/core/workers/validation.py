"""What the server accepts from a *joined* client: model updates and evaluation metrics.

A joined client is still only trusted as far as it can be checked. An update must have exactly the
global model's keys, shapes and dtypes and finite values (its sample size is checked against the
declared count by ``Admission.check_sample_size``). Metrics must be finite, accuracies in [0, 1],
losses non-negative, and every ``<split>_total`` equal to that split's declared count (which, in
shard mode, the manifest vouches for) — otherwise a client could report ``test_total 1e12, test_acc
1.0`` and become the job's accuracy. Each check returns ``None`` when the input is fine, else a
short reason for the server log.
"""
import math
from typing import Dict, Mapping, Optional, Sequence

import torch

from federatedscope.core.aggregators.aggregator import local_keys
from federatedscope.core.message import clip_text

State = Dict[str, torch.Tensor]
_BOUNDED_01 = ("acc",)
_NON_NEGATIVE = ("loss", "avg_loss", "correct", "total")


def all_refused(round_num: int, refused: Mapping[int, str]) -> str:
    """Why the server stops when every update of round ``round_num`` was refused, and the fix:
    non-finite updates mean the model diverged; anything else, that the clients differ."""
    reasons = "; ".join(f"client #{c}: {r}" for c, r in sorted(refused.items()))
    hint = ("the model diverged: lower train.optimizer.lr or set grad.grad_clip, then restart "
            "with federate.restore_from" if "non-finite" in reasons else
            "check that the clients run the same model and data configuration")
    return f"every update of round {round_num} was refused ({clip_text(reasons, 300)}); {hint}"


def update_reference(model: torch.nn.Module) -> State:
    """The model's keys, shapes and dtypes as storage-less ``meta`` tensors, for ``check_update``:
    taken once, since the model's structure never changes, instead of a ``state_dict()`` walk per
    received update."""
    return {k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}


def check_update(ref: State, tensors: Optional[State],
                 local_param: Sequence[str] = ()) -> Optional[str]:
    """An update's tensors against the global model's (``ref``: ``update_reference``). Its
    ``sample_size`` is ``Admission.check_sample_size``'s. ``local_param``:
    ``personalization.local_param``; an update may omit exactly the keys it matches (they stay on
    the client: FedBN's norm layers, a personal head), or send them all."""
    got = tensors or {}
    shared = set(ref) - set(local_keys(ref, local_param))
    if set(got) != set(ref) and set(got) != shared:
        diff = sorted(set(got) ^ set(ref))
        return f"state keys differ from the global model ({len(diff)} differ, e.g. {diff[:3]})"
    for k, t in got.items():
        if t.shape != ref[k].shape or t.dtype != ref[k].dtype:
            return f"{k}: {t.dtype}{list(t.shape)} != {ref[k].dtype}{list(ref[k].shape)}"
        if t.is_floating_point() and not _all_finite(t):
            return f"{k} has non-finite values"
    return None


def check_local_param(own: Sequence[str], claimed: object) -> Optional[str]:
    """A joining client's ``personalization.local_param`` against the server's: they must be the
    same patterns, or every update of that client (which omits the keys its patterns match) is
    refused, or the client cannot load the global model (which lacks the keys the server's
    match). Found at the join, the fix is named before a round is lost."""
    if not isinstance(claimed, list) or not all(isinstance(p, str) for p in claimed):
        return "local_param must be a list of strings"
    if sorted(set(claimed)) == sorted(set(own)):
        return None
    return (f"personalization.local_param differs: the client keeps {sorted(set(claimed))} "
            f"local, the server {sorted(set(own))}; give the server and every client the same "
            f"personalization.local_param (FedBN: ['bn'] or ['norm'])")


def _all_finite(t: torch.Tensor) -> bool:
    """A finite sum proves every element finite (NaN/inf propagate); only when the sum is not
    finite (a NaN, or finite values that overflow) is the element-wise check needed."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _split_and_metric(key: str, splits: Sequence[str]) -> Optional[tuple]:
    split, _, metric = key.partition("_")
    if split not in splits or not metric:
        return None
    return split, metric


def check_metrics(results: object, declared: Mapping[str, int],
                  splits: Sequence[str]) -> Optional[str]:
    """``results``: {"<split>_<metric>": number}; ``declared``: split -> sample count."""
    if not isinstance(results, dict) or not results:
        return "no metrics"
    seen_splits = set()
    for key, value in results.items():
        parsed = _split_and_metric(key, splits) if isinstance(key, str) else None
        if parsed is None:
            return f"metric name {str(key)[:40]!r} is not <split>_<metric> for a split in eval.split"
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"{key} is not a finite number"
        split, metric = parsed
        seen_splits.add(split)
        if metric in _BOUNDED_01 and not 0.0 <= value <= 1.0:
            return f"{key}={value} is outside [0, 1]"
        if metric in _NON_NEGATIVE and value < 0:
            return f"{key}={value} is negative"
    for split in seen_splits:
        total = results.get(f"{split}_total")
        if total is None:
            return f"{split}_total is missing"
        want = int(declared.get(split, 0))
        if total != want:
            return f"{split}_total={total} != the {want} {split} samples declared at join"
        correct = results.get(f"{split}_correct")
        if correct is not None and correct > total:
            return f"{split}_correct={correct} exceeds {split}_total={total}"
    return None
