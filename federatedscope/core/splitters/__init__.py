"""FS's splitters, registered under FS's names through the registry (``register_splitter``):
'lda' (Dirichlet label skew, ``splitter_args: [{'alpha': a}]``) and 'iid'.

A registered callable is FS's ``func(splitter_type, client_num, **splitter_args)`` returning a
splitter or None; ``federatedscope.core.auxiliaries.splitter_builder.get_splitter`` asks them.
"""
from federatedscope.core.splitters.base_splitter import BaseSplitter
from federatedscope.core.splitters.generic import IIDSplitter, LDASplitter
from federatedscope.register import register_splitter

_BUILTIN = {"lda": LDASplitter, "iid": IIDSplitter}


def _make(cls, splitter_type: str, client_num: int, **kwargs):
    try:
        return cls(client_num, **kwargs)
    except TypeError as e:  # an unknown key in data.splitter_args
        raise ValueError(f"data.splitter_args {kwargs} do not fit data.splitter={splitter_type!r} "
                         f"({e}); see doc/config.md") from None


def _builtin(name: str):
    cls = _BUILTIN[name]

    def build(splitter_type: str, client_num: int, **kwargs):
        if str(splitter_type).lower() != name:
            return None
        return _make(cls, splitter_type, client_num, **kwargs)
    return build


for _name in _BUILTIN:
    register_splitter(_name, _builtin(_name))

__all__ = ["BaseSplitter", "IIDSplitter", "LDASplitter"]
