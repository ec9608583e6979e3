"""Optimizers by FederatedScope's rule (``train.optimizer``, ``finetune.optimizer``,
``fedopt.optimizer``): ``get_optimizer(model, type, lr, **kwargs)``.

FS's rule: an optimizer registered with ``register_optimizer`` answers first
(``func(model, type, lr, **kwargs)`` or None); otherwise ``type`` names a class of
``torch.optim`` built with ``lr`` and every other key of the node as keyword arguments
(``betas``, ``eps``, ``nesterov``, ...). ``check_optimizer`` builds the node's optimizer once on a
stand-in parameter and steps it, so an unknown name, an argument the class does not take or a
value of the wrong type fails at start, naming the key, instead of in every client's first round.

SGD whose arguments are among lr / momentum / weight_decay / dampening / nesterov is ``PlainSGD``
below, numerically torch's SGD: constructing any ``torch.optim`` optimizer imports torch._dynamo
and sympy (~800 modules, ~70 MB of RSS measured here), a third of a client's memory budget.
``PlainSGD`` is a ``torch.optim.Optimizer`` by type (without running that constructor, which is
what costs the imports) and keeps its hyper-parameters in ``param_groups[0]``, so torch's own
``lr_scheduler`` classes drive it exactly as they drive ``torch.optim.SGD``.
"""
import inspect
from typing import Dict, Iterable, List

import torch

import federatedscope.register as register

# The keys of an optimizer node that are not constructor arguments beyond lr (FS's own).
_FS_KEYS = ("type", "lr")
# Keys this tree's defaults carry beyond FS's (type, lr), so every FS SGD recipe loads: at these
# values they are passed only to a class that takes them (Adam has no momentum).
_TREE_DEFAULTS = {"momentum": 0.0, "weight_decay": 0.0}
_PLAIN_SGD_ARGS = {"momentum", "weight_decay", "dampening", "nesterov"}


class PlainSGD(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False):  # noqa: no super().__init__ on purpose (see above)
        # torch.optim.SGD's own checks, so both spellings refuse the same values
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr, momentum and weight_decay >= 0 (got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum > 0 and zero dampening")
        self.params: List[torch.nn.Parameter] = [p for p in params if p.requires_grad]
        self.defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                         "dampening": dampening, "nesterov": bool(nesterov)}
        self.param_groups = [dict(self.defaults, params=self.params)]
        self.state: Dict = {}
        # what torch's LRScheduler patches and Optimizer.__repr__/hooks read
        self._optimizer_step_pre_hooks: Dict = {}
        self._optimizer_step_post_hooks: Dict = {}
        self.buffers: Dict[int, torch.Tensor] = {}

    # Read from the param group at every step, as torch.optim.SGD does: OneCycleLR and CyclicLR
    # (cycle_momentum, their default) move the momentum as well as the learning rate.
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @property
    def momentum(self) -> float:
        return self.param_groups[0]["momentum"]

    @property
    def weight_decay(self) -> float:
        return self.param_groups[0]["weight_decay"]

    # torch.optim.SGD's format ({"state": {i: {"momentum_buffer"}}, "param_groups"}): torch's
    # own Optimizer.state_dict needs the constructor this class skips (a FedOpt server with SGD
    # and weight decay checkpoints through these)
    def state_dict(self) -> Dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: {"momentum_buffer": b.clone()} for i, b in self.buffers.items()},
                "param_groups": [group]}

    def load_state_dict(self, state_dict: Dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"loaded state dict has {sum(len(g['params']) for g in groups)} "
                             f"parameters in {len(groups)} group(s); this SGD has "
                             f"{len(self.params)} in one")
        self.param_groups[0].update({k: v for k, v in groups[0].items() if k != "params"})
        self.buffers = {int(i): s["momentum_buffer"].clone().to(self.params[int(i)].dtype)
                        for i, s in state_dict["state"].items() if "momentum_buffer" in s}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        group = self.param_groups[0]
        lr, momentum, weight_decay = self.lr, self.momentum, self.weight_decay
        dampening, nesterov = group["dampening"], group["nesterov"]
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad
            if weight_decay != 0:
                d_p = d_p.add(p, alpha=weight_decay)
            if momentum != 0:
                buf = self.buffers.get(i)
                if buf is None:
                    buf = self.buffers[i] = torch.clone(d_p).detach()
                elif dampening:
                    buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                else:
                    buf.mul_(momentum).add_(d_p)
                d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
            p.add_(d_p, alpha=-lr)


def optimizer_kwargs(node) -> Dict:
    """The constructor arguments of an optimizer node beyond lr (every key but FS's own)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in node.items()
            if k not in _FS_KEYS}


def torch_optimizer_class(type: str):  # noqa: A002 (FS's name)
    """``torch.optim``'s class of that name (exact, else the one name that matches ignoring
    case: FS configs write 'sgd' and 'SGD'), or None."""
    cls = getattr(torch.optim, str(type), None)
    if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer):
        return cls
    matches = [c for name, c in vars(torch.optim).items() if name.lower() == str(type).lower()
               and inspect.isclass(c) and issubclass(c, torch.optim.Optimizer)]
    return matches[0] if len(matches) == 1 else None


class UnknownArgument(ValueError):
    """An optimizer node's key that the optimizer class does not take (``arg``)."""

    def __init__(self, text: str, arg: str):
        super().__init__(text)
        self.arg = arg


def _takes(cls) -> set:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "params"}


def get_optimizer(model, type: str, lr: float, **kwargs):  # noqa: A002 (FS's name)
    """FS's builder: a registered optimizer first, else ``torch.optim.<type>``. ``model`` is an
    ``nn.Module`` or an iterable of tensors. Raises ValueError naming what is wrong."""
    for func in register.optimizer_dict.values():
        optimizer = func(model, type, lr, **kwargs)
        if optimizer is not None:
            return optimizer
    params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module) else model)
              if p.requires_grad]
    sgd = str(type).lower() == "sgd"
    if sgd and set(kwargs) <= _PLAIN_SGD_ARGS:
        return PlainSGD(params, lr=lr, **kwargs)
    cls = torch_optimizer_class(type)
    if cls is None:
        raise ValueError(f"unknown optimizer type {type!r} (not registered with "
                         f"federatedscope.register.register_optimizer, and not a class of "
                         f"torch.optim, e.g. SGD, Adam, AdamW, RMSprop, Adagrad)")
    takes = _takes(cls)
    kwargs = {k: v for k, v in kwargs.items()
              if not (k in _TREE_DEFAULTS and v == _TREE_DEFAULTS[k] and k not in takes)}
    unknown = sorted(set(kwargs) - takes)
    if unknown:
        raise UnknownArgument(f"torch.optim.{cls.__name__} takes no argument {unknown[0]!r} "
                              f"(it takes {', '.join(sorted(takes))})", unknown[0])
    return cls(params, lr=lr, **kwargs)


def build_optimizer(model, node, lr=None):
    """The optimizer an optimizer config node asks for over ``model``; ``lr`` overrides
    ``node.lr`` (Ditto's personal model: ``personalization.lr``)."""
    return get_optimizer(model, node.type, node.lr if lr is None else lr,
                         **optimizer_kwargs(node))


def check_optimizer(key: str, node) -> None:
    """Build ``node``'s optimizer on a stand-in parameter and take one step: raises ValueError
    naming ``key`` and the fix when the name, an argument or a value's type is wrong."""
    kwargs = optimizer_kwargs(node)
    try:
        # torch's global RNG is left as it was: the check runs after the seed is set, and a
        # drawn stand-in would shift every model's initialisation
        with torch.random.fork_rng(devices=[]):
            stand_in = torch.nn.Linear(2, 1)   # a module: a registered builder gets what FS does
            optimizer = build_optimizer(stand_in, node)
            for p in stand_in.parameters():
                p.grad = torch.ones_like(p)
            optimizer.step()
    except UnknownArgument as e:
        raise ValueError(f"{key}.{e.arg}: {e}; remove {key}.{e.arg} from the YAML or set "
                         f"{key}.type to an optimizer that takes it") from None
    except ValueError as e:
        raise ValueError(f"{key}: {e}; set {key}.type to a torch.optim class (or a registered "
                         f"optimizer) and give only its arguments as keys of {key}") from None
    except (TypeError, RuntimeError, KeyError, AttributeError, AssertionError) as e:
        raise ValueError(f"{key}: {node.type!r} with arguments {kwargs} cannot be built: "
                         f"{type(e).__name__}: {e}; give each argument the type "
                         f"torch.optim.{node.type} expects (see its documentation)") from None
