"""doc/config.md lists every key with its default ("Every key this version knows, with its
default"): the YAML block there must be exactly ``get_default_cfg()``, so a default changed in code
(or a key added) without the reference, or the other way round, fails here with the key named."""
import os
import re

import yaml

from federatedscope.core.configs.config import get_default_cfg

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "doc", "config.md")


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def test_doc_config_block_is_the_default_tree():
    with open(DOC) as f:
        text = f.read()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert blocks, f"{DOC}: no ```yaml block with the default tree"
    documented = _flat(yaml.safe_load(blocks[0]))
    actual = _flat(get_default_cfg())
    missing = sorted(set(actual) - set(documented))
    stale = sorted(set(documented) - set(actual))
    differ = sorted(k for k in set(actual) & set(documented) if actual[k] != documented[k]
                    or type(actual[k]) is not type(documented[k]))
    assert not (missing or stale or differ), (
        f"{DOC} is out of step with get_default_cfg(): keys not documented {missing}; documented "
        f"but unknown {stale}; different default (key, doc, code) "
        f"{[(k, documented[k], actual[k]) for k in differ]}. "
        f"Regenerate the block: python -c \"from federatedscope.core.configs.config import "
        f"get_default_cfg; print(get_default_cfg().dump())\"")
