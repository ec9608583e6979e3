"""FederatedScope's algorithm keys: FedOpt, FedProx, personalization (FedBN, Ditto), fine-tuning
before evaluation and learning-rate schedulers, with FS's names and defaults.

``extend_fl_algo_cfg(cfg)`` adds the defaults to a fresh tree (``get_default_cfg`` calls it);
``assert_fl_algo_cfg(cfg)`` checks them and fills the derived values the way FS's check function
does (``personalization.local_update_steps -1`` and ``personalization.lr <= 0`` mean "as in
``train``"); ``finalize`` calls it before freezing. Every error names the key and the fix.
What the keys do: doc/algorithms.md.
"""
import logging

from yacs.config import CfgNode

logger = logging.getLogger("federatedscope")

# FS keys loaded here but not implemented: key -> what FS does with it (config.py merges this into
# its refused-key table, so a non-default value is refused exactly like the other FS keys).
FL_ALGO_NOT_IMPLEMENTED = {
    "finetune.simple_tuning": "simple-tuning (re-training a linear head)",
    "train.scheduler.warmup_ratio": "warm-up length of FS's NLP 'warmup_step' schedulers",
    "finetune.scheduler.warmup_ratio": "warm-up length of FS's NLP 'warmup_step' schedulers",
}

METHODS = ("fedavg", "fedopt", "ditto")
# FS methods whose trainers/servers do not exist here: refused by name instead of a choice list.
_REFUSED_METHODS = {"pfedme": "pFedMe", "fedem": "FedEM", "fedrep": "FedRep",
                    "local": "local-only training", "global": "global-only training"}
_PROXIMAL = "proximal_regularizer"


def _node(new_allowed: bool = False, **kwargs) -> CfgNode:
    # The config's own CN subclass (merge errors that name the file) when available.
    from federatedscope.core.configs.config import CN
    node = CN(new_allowed=new_allowed)
    for k, v in kwargs.items():
        setattr(node, k, v)
    return node


def optimizer_node(**defaults) -> CfgNode:
    # FS: any further key (betas, eps, nesterov, ...) is passed to the optimizer's constructor
    return _node(new_allowed=True, **defaults)


def _scheduler_node() -> CfgNode:
    # FS: any further key (e.g. step_size, gamma, milestones) is passed to torch's scheduler.
    return _node(new_allowed=True, type="", warmup_ratio=0.0)


def extend_fl_algo_cfg(cfg) -> None:
    cfg.fedopt = _node(use=False,
                       optimizer=optimizer_node(type="SGD", lr=0.01, momentum=0.0))
    cfg.fedprox = _node(use=False, mu=0.0)
    cfg.personalization = _node(
        local_param=[], share_non_trainable_para=False, local_update_steps=-1,
        regular_weight=0.1, lr=0.0, K=5, beta=1.0,
        # contract C10: where a client keeps its personal state between restarts ("" = default)
        state_dir="")
    cfg.train.scheduler = _scheduler_node()
    cfg.finetune = _node(
        before_eval=False, local_update_steps=1, batch_or_epoch="epoch", freeze_param="",
        optimizer=optimizer_node(type="SGD", lr=0.1, momentum=0.0, weight_decay=0.0),
        scheduler=_scheduler_node(),
        simple_tuning=False, epoch_linear=10, lr_linear=0.005, weight_decay=0.0, local_param=[])


def _fail(msg: str):
    from federatedscope.core.configs.config import ConfigError
    raise ConfigError(msg + " (see doc/algorithms.md)")


def _check_method(cfg) -> None:
    method = str(cfg.federate.method).lower()
    if method in _REFUSED_METHODS:
        _fail(f"federate.method={cfg.federate.method!r} ({_REFUSED_METHODS[method]}) is not "
              f"implemented here; use one of FedAvg, FedOpt, Ditto")
    if method not in METHODS:
        _fail(f"federate.method={cfg.federate.method!r} is not supported; choose one of "
              f"FedAvg, FedOpt, Ditto")
    if method == "fedopt":
        cfg.fedopt.use = True  # FS: the method name alone switches the server optimizer on
    o = cfg.fedopt.optimizer
    if cfg.fedopt.use and not o.lr > 0:
        _fail(f"fedopt.optimizer.lr={o.lr} must be > 0 (FS's FEMNIST recipe uses 1.0)")
    if not 0.0 <= o.momentum < 1.0:
        _fail(f"fedopt.optimizer.momentum={o.momentum} must be in [0, 1)")


def _check_prox(cfg) -> None:
    if cfg.fedprox.mu < 0:
        _fail(f"fedprox.mu={cfg.fedprox.mu} must be >= 0")
    reg = cfg.regularizer
    if reg.type not in ("", _PROXIMAL):
        _fail(f"regularizer.type={reg.type!r} is not supported; use '' or '{_PROXIMAL}'")
    if reg.mu < 0:
        _fail(f"regularizer.mu={reg.mu} must be >= 0")
    if cfg.fedprox.use:
        # FS's FedProx wrapper sets the proximal regularizer from fedprox.mu
        if reg.type == _PROXIMAL and reg.mu not in (0.0, cfg.fedprox.mu):
            _fail(f"fedprox.mu={cfg.fedprox.mu} and regularizer.mu={reg.mu} disagree; set only "
                  f"fedprox.mu")
        reg.type, reg.mu = _PROXIMAL, float(cfg.fedprox.mu)


def _check_personalization(cfg) -> None:
    p = cfg.personalization
    if not all(isinstance(s, str) and s for s in p.local_param):
        _fail(f"personalization.local_param={list(p.local_param)} must be a list of non-empty "
              f"name fragments, e.g. ['bn', 'norms']")
    if p.local_update_steps == -1:
        p.local_update_steps = cfg.train.local_update_steps
    if p.local_update_steps < 1:
        _fail(f"personalization.local_update_steps={p.local_update_steps} must be >= 1 "
              f"(or -1: the same as train.local_update_steps)")
    if p.lr <= 0.0:
        p.lr = cfg.train.optimizer.lr
    if p.regular_weight < 0:
        _fail(f"personalization.regular_weight={p.regular_weight} must be >= 0")
    if str(cfg.federate.method).lower() != "ditto" and \
            (p.regular_weight != 0.1 or p.local_update_steps != cfg.train.local_update_steps):
        logger.warning("personalization.regular_weight / local_update_steps act only with "
                       "federate.method Ditto (as in FederatedScope); they are unused here")


def _check_scheduler(cfg, key: str) -> None:
    """Build the scheduler once on a stand-in optimizer, so a misspelt type or argument fails
    now, naming the key, instead of in every client's first round."""
    node = _get(cfg, key)
    if not node.type:
        return
    from federatedscope.core.trainers.scheduler import scheduler_kwargs, probe_scheduler
    try:
        probe_scheduler(node.type, scheduler_kwargs(node))
    except (TypeError, ValueError, KeyError) as e:
        _fail(f"{key}: {node.type!r} with arguments {scheduler_kwargs(node)} cannot be built: "
              f"{e}; give torch.optim.lr_scheduler's class name and its arguments as keys of "
              f"{key} in the YAML (e.g. type: StepLR, step_size: 2, gamma: 0.5)")


def _check_optimizer(cfg, key: str) -> None:
    """Build the optimizer once on a stand-in parameter (``core/trainers/optimizer.py``), so an
    unknown type, an argument its class does not take or a mistyped value fails now."""
    from federatedscope.core.trainers.optimizer import check_optimizer
    try:
        check_optimizer(key, _get(cfg, key))
    except ValueError as e:
        _fail(str(e))


def _check_finetune(cfg) -> None:
    f = cfg.finetune
    if f.batch_or_epoch not in ("batch", "epoch"):
        _fail(f"finetune.batch_or_epoch={f.batch_or_epoch!r} must be 'batch' or 'epoch'")
    if f.local_update_steps < 1:
        _fail(f"finetune.local_update_steps={f.local_update_steps} must be >= 1")
    if f.optimizer.lr < 0:
        _fail(f"finetune.optimizer.lr={f.optimizer.lr} must be >= 0")


def _check_trainer_and_criterion(cfg) -> None:
    from federatedscope.core.trainers.trainer import resolve_criterion, resolve_trainer_class
    if resolve_trainer_class(cfg.trainer.type) is None:
        _fail(f"trainer.type={cfg.trainer.type!r} is neither built in ('general', 'cvtrainer') "
              f"nor registered with federatedscope.register.register_trainer")
    if resolve_criterion(cfg.criterion.type, "cpu") is None:
        _fail(f"criterion.type={cfg.criterion.type!r} is neither built in ('CrossEntropyLoss') "
              f"nor registered with federatedscope.register.register_criterion")


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def assert_fl_algo_cfg(cfg) -> None:
    """Check the algorithm keys and fill FS's derived values (before the tree is frozen)."""
    _check_method(cfg)
    _check_prox(cfg)
    _check_personalization(cfg)
    _check_finetune(cfg)
    for key in ("train.optimizer", "finetune.optimizer", "fedopt.optimizer"):
        _check_optimizer(cfg, key)
    _check_scheduler(cfg, "train.scheduler")
    _check_scheduler(cfg, "finetune.scheduler")
    _check_trainer_and_criterion(cfg)
