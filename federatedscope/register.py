"""FederatedScope's registry: where domain packages plug their datasets, models, trainers and
workers into the core, so that the core never imports a domain package.

Names and call conventions are FS's. Each ``register_*`` stores a callable under a key; the
builders in ``core/auxiliaries`` ask every registered callable in turn and take the first answer
that is not ``None`` (FS's ``get_data``/``get_model``/``get_trainer`` do the same):

| registry | a registered callable is | asked by |
| --- | --- | --- |
| ``data_dict`` | ``func(config, client_cfgs) -> (data, config)`` or None | ``get_data`` |
| ``model_dict`` | ``func(model_config, input_shape) -> nn.Module`` or None | ``get_model`` |
| ``trainer_dict`` | ``func(trainer_type) -> trainer class`` or None | ``get_trainer`` |
| ``worker_dict`` | ``func(method) -> {'client': cls, 'server': cls}`` or None | ``get_client_cls``/``get_server_cls`` |
| ``criterion_dict`` | ``func(type, device) -> criterion`` or None | the trainer |
| ``splitter_dict`` | ``func(splitter_type, **kwargs) -> splitter`` or None | data_idx loading, the shard tool |
| ``scheduler_dict`` | ``func(optimizer, type, **kwargs) -> scheduler`` or None | the trainer |
| ``optimizer_dict`` | ``func(model, type, lr, **kwargs) -> optimizer`` or None | the trainer, FedOpt |
| ``aggregator_dict`` | ``func(method, config) -> aggregator`` or None | ``get_aggregator`` |

Beyond FS, one name-keyed registry: ``dataset_spec_dict`` (``data.type`` -> ``DatasetSpec``,
``core/data/dataset_spec.py``), read by the shard format, the shard tool and the model builder
for a dataset's sample type, class count and reader.

The built-in domain packages (``federatedscope.cv``, ``federatedscope.nlp``) register themselves
when imported, and they are imported the first time any registry is read (``BUILTIN_PACKAGES``),
so nothing has to import them by hand, while ``import federatedscope`` stays free of torch for
the small tools that need only the core's helpers (the launcher's pre-flight and health wait).
A user's own package registers the same way, before ``get_data``. Its callables are asked before
the tree's own (``BUILTIN_MODULES``; FS asks the registry before its built-in types), so a
package can take over a built-in ``model.type`` or ``data.type`` under a key of its own.
"""
import importlib
import logging
from typing import Any, Callable, Dict

logger = logging.getLogger("federatedscope")

# Named as strings: the registry knows where the built-ins live, the core does not import them.
BUILTIN_PACKAGES = ("federatedscope.cv", "federatedscope.nlp")
# What the tree itself registers (callables defined there): asked after everything else.
BUILTIN_MODULES = BUILTIN_PACKAGES + ("federatedscope.core",)
_builtins_state = {"loaded": False}


def load_builtin_packages() -> None:
    """Import the built-in domain packages once (they register themselves on import)."""
    if _builtins_state["loaded"]:
        return
    _builtins_state["loaded"] = True     # first: their own registrations read the registries
    for name in BUILTIN_PACKAGES:
        importlib.import_module(name)


def is_builtin(module: Any) -> bool:
    """Whether a registered callable is defined in the tree's own packages (``BUILTIN_MODULES``)."""
    name = getattr(module, "__module__", None)     # a plain value (a spec, 5) has none
    return isinstance(name, str) and any(name == p or name.startswith(p + ".")
                                         for p in BUILTIN_MODULES)


class Registry(dict):
    """A registry: a dict whose reads first load the built-in packages (writes do not). The keys
    of built-in callables (``builtin``) come after every other key, whatever the import order."""

    def __init__(self):
        super().__init__()
        self.builtin = set()

    def added(self, key, module: Any) -> None:
        """``key`` is new: a built-in goes last, any other before the built-ins."""
        if is_builtin(module):
            self.builtin.add(key)
            return
        for k in [k for k in dict.keys(self) if k in self.builtin]:
            dict.__setitem__(self, k, dict.pop(self, k))

    def __getitem__(self, key):
        load_builtin_packages()
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        load_builtin_packages()
        return super().__contains__(key)

    def __iter__(self):
        load_builtin_packages()
        return super().__iter__()

    def __len__(self) -> int:
        load_builtin_packages()
        return super().__len__()

    def get(self, key, default=None):
        load_builtin_packages()
        return super().get(key, default)

    def keys(self):
        load_builtin_packages()
        return super().keys()

    def values(self):
        load_builtin_packages()
        return super().values()

    def items(self):
        load_builtin_packages()
        return super().items()


data_dict: Dict[str, Callable] = Registry()
model_dict: Dict[str, Callable] = Registry()
trainer_dict: Dict[str, Callable] = Registry()
worker_dict: Dict[str, Callable] = Registry()
criterion_dict: Dict[str, Callable] = Registry()
splitter_dict: Dict[str, Callable] = Registry()
scheduler_dict: Dict[str, Callable] = Registry()
optimizer_dict: Dict[str, Callable] = Registry()
aggregator_dict: Dict[str, Callable] = Registry()
dataset_spec_dict: Dict[str, Any] = Registry()


def register(key: str, module: Any, module_dict: Dict[str, Any]) -> None:
    new = key not in module_dict
    if not new and module_dict[key] is not module:
        logger.warning(f"Registry: key {key!r} is already registered; overwritten")
    module_dict[key] = module
    if new and isinstance(module_dict, Registry):
        module_dict.added(key, module)


def _registrar(name: str, module_dict: Dict[str, Callable]) -> Callable[[str, Callable], None]:
    def register_into(key: str, module: Callable) -> None:
        register(key, module, module_dict)
    register_into.__name__ = register_into.__qualname__ = name
    return register_into


# FS's names: ``register_data(key, func)`` etc. store ``func`` in the dict of the same kind
register_data = _registrar("register_data", data_dict)
register_model = _registrar("register_model", model_dict)
register_trainer = _registrar("register_trainer", trainer_dict)
register_worker = _registrar("register_worker", worker_dict)
register_criterion = _registrar("register_criterion", criterion_dict)
register_splitter = _registrar("register_splitter", splitter_dict)
register_scheduler = _registrar("register_scheduler", scheduler_dict)
register_optimizer = _registrar("register_optimizer", optimizer_dict)
register_aggregator = _registrar("register_aggregator", aggregator_dict)


def register_dataset_spec(key: str, spec: Any) -> None:
    register(key.lower(), spec, dataset_spec_dict)
