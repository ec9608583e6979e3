"""FederatedScope's evaluation keys (``eval.*``): the checks yacs cannot make.

``assert_evaluation_cfg(cfg)`` (called by ``config.finalize``) refuses metrics and report forms
this trainer does not write, and a best-round key no client reports. Every error names the key
and the fix.
"""
import logging

logger = logging.getLogger("federatedscope")

FS_BEST_KEY = "val_loss"   # FS's default eval.best_res_update_round_wise_key
KNOWN_METRICS = ("acc", "correct", "loss", "total", "avg_loss")
KNOWN_REPORTS = ("weighted_avg", "avg", "raw", "fairness")


def assert_evaluation_cfg(cfg) -> None:
    from federatedscope.core.configs.config import ConfigError
    for m in cfg.eval.metrics:
        if m not in KNOWN_METRICS:
            raise ConfigError(f"eval.metrics: unknown metric {m!r}; known: {list(KNOWN_METRICS)}")
    for r in cfg.eval.report:
        if r not in KNOWN_REPORTS:
            raise ConfigError(f"eval.report: unknown report {r!r}; known: {list(KNOWN_REPORTS)}")
    key = str(cfg.eval.best_res_update_round_wise_key)
    problem = _best_key_problem(key, list(cfg.eval.split), str(cfg.trainer.type).lower())
    if problem and key != FS_BEST_KEY:
        raise ConfigError(problem)
    if problem:
        logger.warning(f"{problem}: no best round is tracked and early stopping cannot fire")


def _best_key_problem(key: str, splits: list, trainer: str) -> str:
    """The key that picks the best round (and drives early stopping) must be one the clients
    report: ``<split>_<metric>`` with the split evaluated (``eval.split``) and, for the built-in
    trainer, a metric it writes. A key the config names is refused (a typo would silently turn
    early stopping off); FS's default ``val_loss`` with ``eval.split ['test']`` is warned: the
    config never asked for it, and only the best round and early stopping are lost. Returns
    what is wrong with ``key``, or "" when nothing is."""
    split, _, metric = key.partition("_")
    if split not in splits:
        why = f"names the split {split!r}, which eval.split={splits} does not evaluate"
    elif trainer in ("general", "cvtrainer") and metric not in KNOWN_METRICS:
        why = f"names the metric {metric!r}; the trainer reports {list(KNOWN_METRICS)}"
    else:
        return ""
    return (f"eval.best_res_update_round_wise_key={key!r} {why}; set it to e.g. "
            f"'{splits[0] if splits else 'test'}_loss' or '{splits[0] if splits else 'test'}_acc'")
