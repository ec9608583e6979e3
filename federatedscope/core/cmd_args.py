"""FS's command line: ``--cfg FILE [--client_cfg FILE] [--override k=v ...] [key value ...]``.

Trailing ``key value`` pairs are collected verbatim (``argparse.REMAINDER``) and prefix
abbreviation is off, so a value such as ``client`` or ``client_1.yaml`` is never mistaken for the
``--client_cfg`` option (an upstream FS crash).
"""
import argparse
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    # help and description texts carry "# pragma: no mutate": no program or test reads their
    # wording (doc/mutation.md states the policy); the option names, dests and defaults are mutated
    parser = argparse.ArgumentParser(
        prog="federatedscope/main.py", allow_abbrev=False,
        description="FederatedScope-compatible federated learning "  # pragma: no mutate
                    "(standalone or distributed).")  # pragma: no mutate
    parser.add_argument("--cfg", dest="cfg_file", default="",
                        help="YAML config file")  # pragma: no mutate
    parser.add_argument("--client_cfg", dest="client_cfg_file", default="",
                        help="per-client YAML (accepted for FS "  # pragma: no mutate
                             "compatibility; merged on top)")  # pragma: no mutate
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), "  # pragma: no mutate
                             "e.g. distributed_data.enabled=false")  # pragma: no mutate
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="trailing 'key value' pairs that override "  # pragma: no mutate
                             "the YAML")  # pragma: no mutate
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
    trailing pairs, so ``--override`` wins)."""
    from federatedscope.core.configs.config import ConfigError
    pairs: List[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--override expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        pairs += [k.strip(), v.strip()]
    return pairs
