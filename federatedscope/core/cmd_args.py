"""FS's command line: ``--cfg FILE [--client_cfg FILE] [--override k=v ...] [key value ...]``.

Trailing ``key value`` pairs are collected verbatim (``argparse.REMAINDER``) and prefix
abbreviation is off, so a value such as ``client`` or ``client_1.yaml`` is never mistaken for the
``--client_cfg`` option (an upstream FS crash).
"""
import argparse
from typing import List, Optional


# Help and description texts live at module level, outside the functions mutmut mutates: no
# program or test reads their wording (doc/mutation.md states the policy; a trailing
# "# pragma: no mutate" reaches only the first line of a multi-line call). The option names,
# dests and defaults inside parse_args are mutated.
_DESCRIPTION = "FederatedScope-compatible federated learning (standalone or distributed)."
_HELP = {
    "cfg": "YAML config file",
    "client_cfg": "FS's per-client YAML: sections client_1:, client_2:, ... each merged over "
                  "the global config for that client only",
    "override": "override one config key (repeatable), e.g. distributed_data.enabled=false",
    "opts": "trailing 'key value' pairs that override the YAML",
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="federatedscope/main.py", allow_abbrev=False,
                                     description=_DESCRIPTION)
    parser.add_argument("--cfg", dest="cfg_file", default="", help=_HELP["cfg"])
    parser.add_argument("--client_cfg", dest="client_cfg_file", default="",
                        help=_HELP["client_cfg"])
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help=_HELP["override"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help=_HELP["opts"])
    args = parser.parse_args(argv)
    # REMAINDER also swallows options given after the first pair; pull ours back out.
    rest: List[str] = []
    it = iter(args.opts)
    for item in it:
        if item == "--override":
            args.override.append(next(it, ""))
        elif item.startswith("--override="):
            args.override.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    args.opts = rest
    return args


def override_pairs(overrides: List[str]) -> List[str]:
    """``['k=v', ...]`` -> ``['k', 'v', ...]`` for ``merge_from_list`` (applied after the
    trailing pairs, so ``--override`` wins; ``client_<id>.*`` keys go to that client's config,
    ``core/configs/client_cfg.py``)."""
    from federatedscope.core.configs.config import ConfigError
    pairs: List[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--override expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        pairs += [k.strip(), v.strip()]
    return pairs
