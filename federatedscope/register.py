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


def register_data(key: str, module: Callable) -> None:
    register(key, module, data_dict)


def register_model(key: str, module: Callable) -> None:
    register(key, module, model_dict)


def register_trainer(key: str, module: Callable) -> None:
    register(key, module, trainer_dict)


def register_worker(key: str, module: Callable) -> None:
    register(key, module, worker_dict)


def register_criterion(key: str, module: Callable) -> None:
    register(key, module, criterion_dict)


def register_splitter(key: str, module: Callable) -> None:
    register(key, module, splitter_dict)


def register_scheduler(key: str, module: Callable) -> None:
    register(key, module, scheduler_dict)


def register_aggregator(key: str, module: Callable) -> None:
    register(key, module, aggregator_dict)


def register_dataset_spec(key: str, spec: Any) -> None:
    register(key.lower(), spec, dataset_spec_dict)
