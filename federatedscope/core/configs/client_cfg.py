"""FS's per-client configs: ``--client_cfg FILE`` and ``client_<id>.<key> value`` pairs.

The file's top level is one section per client, ``client_1:``, ``client_2:``, ..., each a partial
config (``client_2: {train: {optimizer: {lr: 0.5}}}``); command-line pairs whose key starts with
``client_<id>.`` go to the same tree (FS's ``parse_client_cfg``), after the file, so they win. A
client's config is the global one with its section merged on top (``fed_runner._client_cfg``,
FS's ``merge_from_other_cfg``); ``main.py`` hands the tree to ``get_data`` and ``get_runner``
(``client_configs``), as FS's main does.

Checked at start, each error naming where the section came from, the section and the key:
``check_client_cfgs`` merges every section over a copy of the global config and runs the same
checks as the global config (``finalize``: unknown keys, types, choices, refused keys, the
optimizer and scheduler probes); ``check_client_ids`` refuses a section for an id outside
``1..federate.client_num`` once the data has fixed that number.
"""
import logging
import re
from typing import List, Optional, Tuple

import yacs.config as _yacs

from federatedscope.core.configs.config import CN, ConfigError, finalize

logger = logging.getLogger("federatedscope")

# the id as the runner looks a section up (client_1, never client_01: that would be checked and
# never applied)
_SECTION = re.compile(r"^client_([1-9]\d*)$")
_CLIENT_KEY = re.compile(r"^client_\d+\.")
_EXAMPLE = "client_1: {train: {local_update_steps: 3}}"


def split_client_opts(opts: List[str]) -> Tuple[List[str], List[str]]:
    """(global pairs, ``client_<id>.*`` pairs). Only keys are looked at (FS's splitter also
    takes a *value* starting with 'client' for a key, e.g. ``expname client_run``)."""
    if len(opts) % 2:
        return list(opts), []      # merge_from_list names the odd list
    own, client = [], []
    for key, value in zip(opts[0::2], opts[1::2]):
        (client if _CLIENT_KEY.match(str(key)) else own).extend([key, value])
    return own, client


def _read(path: str) -> CN:
    """The file as a tree, with the global config's file errors (missing, unreadable, YAML)."""
    probe = CN(new_allowed=True)
    try:
        probe.merge_from_file(path)
    except ConfigError as e:
        raise ConfigError(f"--client_cfg {e}") from None
    return probe


def load_client_cfgs(path: str, client_opts: List[str]) -> Optional[CN]:
    """The per-client tree of ``--client_cfg path`` and the ``client_<id>.*`` pairs; None when
    neither is given (FS: ``client_cfgs = None``)."""
    if not path and not client_opts:
        return None
    tree = _read(path) if path else CN(new_allowed=True)
    for key, value in zip(client_opts[0::2], client_opts[1::2]):
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            if part not in node:
                node[part] = CN(new_allowed=True)
            node = node[part]
            if not isinstance(node, CN):
                raise ConfigError(f"command line: {key}: {part} is a value, not a group of keys")
        if isinstance(value, str):
            value = {"true": "True", "false": "False"}.get(value.lower(), value)
        node[parts[-1]] = CN._decode_cfg_value(value)
    return tree


def source_of(path: str, client_opts: List[str]) -> str:
    """Where the sections came from, as errors name it."""
    if path and client_opts:
        return f"{path} (and command-line client_<id>.* pairs)"
    return path or "command line"


def _section_id(name: str, source: str) -> int:
    m = _SECTION.match(str(name))
    if m is None:
        padded = re.match(r"^client_0+([1-9]\d*)$", str(name))
        hint = f"write client_{padded.group(1)}; " if padded else ""
        raise ConfigError(f"{source}: top-level key {name!r} is not a client section; {hint}FS's "
                          f"per-client config has one section per client id (1..federate."
                          f"client_num), e.g. {_EXAMPLE}")
    return int(m.group(1))


def check_client_cfgs(client_cfgs: Optional[CN], cfg: CN, source: str) -> None:
    """Every section merged over a copy of ``cfg`` (the global config before ``finalize``)
    must pass the global config's own checks."""
    if client_cfgs is None:
        return
    for name in client_cfgs:
        _section_id(name, source)
        section = client_cfgs[name]
        if not isinstance(section, CN):
            raise ConfigError(f"{source}: section {name} must be a group of config keys, e.g. "
                              f"{_EXAMPLE}; got {section!r}")
        merged = cfg.clone()
        merged.defrost()
        try:
            # yacs' merge, with the section's name in front of every key it names
            _yacs._merge_a_into_b(section, merged, merged, [name])
        except (KeyError, AssertionError, ValueError) as e:
            text = e.args[0] if isinstance(e, (KeyError, AssertionError)) else str(e)
            raise ConfigError(f"{source}: section {name}: {text} (a section takes the keys of "
                              f"the global config; see doc/config.md)") from None
        level = logger.level
        logger.setLevel(logging.ERROR)   # the global check already logged these warnings once
        try:
            finalize(merged)
        except ConfigError as e:
            raise ConfigError(f"{source}: section {name}: {e}") from None
        finally:
            logger.setLevel(level)


def check_client_ids(client_cfgs: Optional[CN], client_num: int, source: str) -> None:
    """A section for a client this run does not have is refused (``client_num`` is the count
    after ``get_data``; 0 on a process that does not know it)."""
    if client_cfgs is None or client_num <= 0:
        return
    for name in client_cfgs:
        cid = _section_id(name, source)
        if cid > client_num:
            raise ConfigError(f"{source}: section {name} is for client {cid}, but this run has "
                              f"federate.client_num={client_num} clients (ids 1..{client_num}); "
                              f"remove the section or raise federate.client_num")
