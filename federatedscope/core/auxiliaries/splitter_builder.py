"""FS's ``get_splitter``: the splitter ``data.splitter`` names, from the registry."""
from typing import Any, Dict

import federatedscope.core.splitters  # noqa: F401  (registers 'lda' and 'iid')
from federatedscope import register


def splitter_kwargs(splitter_args: Any) -> Dict[str, Any]:
    """FS spells ``data.splitter_args`` as a list holding one dict, e.g. ``[{'alpha': 0.5}]``."""
    if not splitter_args:
        return {}
    if isinstance(splitter_args, dict):
        return dict(splitter_args)
    if isinstance(splitter_args, (list, tuple)) and len(splitter_args) == 1 \
            and isinstance(splitter_args[0], dict):
        return dict(splitter_args[0])
    raise ValueError(f"data.splitter_args={splitter_args!r} must be a list holding one mapping, "
                     f"e.g. [{{'alpha': 0.5}}]")


def build_splitter(splitter_type: str, client_num: int, splitter_args: Any = None):
    """The registered splitter for ``splitter_type``; ValueError names the known ones.

    Seeding is the caller's: ``splitter.split_indices(labels, seed)`` (a user's FS splitter
    need not accept a seed argument)."""
    kwargs = splitter_kwargs(splitter_args)
    for func in register.splitter_dict.values():
        splitter = func(splitter_type, client_num, **kwargs)
        if splitter is not None:
            return splitter
    raise ValueError(f"data.splitter={splitter_type!r} is not a registered splitter; known: "
                     f"{sorted(register.splitter_dict)}")


def get_splitter(config):
    """FS's entry point: ``data.splitter`` with ``data.splitter_args`` for
    ``federate.client_num`` clients; None when ``data.splitter`` is empty (FS's behaviour)."""
    if not config.data.splitter:
        return None
    return build_splitter(config.data.splitter, config.federate.client_num,
                          getattr(config.data, "splitter_args", []))
