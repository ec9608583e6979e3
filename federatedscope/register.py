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
| ``aggregator_dict`` | ``func(method, config) -> aggregator`` or None | ``get_aggregator`` |

Beyond FS, one name-keyed registry: ``dataset_spec_dict`` (``data.type`` -> ``DatasetSpec``,
``core/data/dataset_spec.py``), read by the shard format, the shard tool and the model builder
for a dataset's sample type, class count and reader.

The built-in domain packages (``federatedscope.cv``, ``federatedscope.nlp``) register themselves
when imported; ``federatedscope/__init__.py`` imports them, so ``import federatedscope`` (or any
of its modules) is enough. A user's own package registers the same way, before ``get_data``.
"""
import logging
from typing import Any, Callable, Dict

logger = logging.getLogger("federatedscope")

data_dict: Dict[str, Callable] = {}
model_dict: Dict[str, Callable] = {}
trainer_dict: Dict[str, Callable] = {}
worker_dict: Dict[str, Callable] = {}
criterion_dict: Dict[str, Callable] = {}
splitter_dict: Dict[str, Callable] = {}
scheduler_dict: Dict[str, Callable] = {}
aggregator_dict: Dict[str, Callable] = {}
dataset_spec_dict: Dict[str, Any] = {}


def register(key: str, module: Any, module_dict: Dict[str, Any]) -> None:
    if key in module_dict and module_dict[key] is not module:
        logger.warning(f"Registry: key {key!r} is already registered; overwritten")
    module_dict[key] = module


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
register_aggregator = _registrar("register_aggregator", aggregator_dict)


def register_dataset_spec(key: str, spec: Any) -> None:
    register(key.lower(), spec, dataset_spec_dict)
