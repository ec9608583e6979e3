"""The import contracts of .importlinter (``make lint``): the core never imports a domain package
(cv/ registers itself), communication/ never imports workers/. Shown to fail when broken: one
forbidden import planted in a copy of the package is reported by module and line."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT, "--config", os.path.join(root, ".importlinter"),
                           "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def _flat(text: str) -> str:
    """lint-imports wraps long lines; join them so a violation reads as one line."""
    return " ".join(text.split())


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(os.path.join(ROOT, "federatedscope"), tmp_path / "federatedscope",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    return tmp_path


def _plant(copy, rel: str, line: str) -> None:
    path = copy / "federatedscope" / rel
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")


@pytest.mark.parametrize("rel, line, violation", [
    ("core/auxiliaries/model_builder.py", "import federatedscope.cv.model.cnn",
     "federatedscope.core.auxiliaries.model_builder -> federatedscope.cv.model.cnn"),
    ("core/data/base_data.py", "from federatedscope.cv.dataloader import dataloader",
     "federatedscope.core.data.base_data -> federatedscope.cv.dataloader"),
    ("core/communication/local.py", "from federatedscope.core.workers.base_worker import Incoming",
     "federatedscope.core.communication.local -> federatedscope.core.workers.base_worker"),
])
def test_a_planted_forbidden_import_breaks_the_contract(copy, rel, line, violation):
    clean = _flat(_lint(str(copy)).stdout)
    assert violation not in clean
    _plant(copy, rel, line)
    result = _lint(str(copy))
    assert result.returncode != 0
    assert violation in _flat(result.stdout), result.stdout[-3000:]


def test_the_runners_data_and_builders_keep_the_contracts():
    """Whatever else is still pending, these modules break neither contract."""
    out = _flat(_lint(ROOT).stdout)
    assert "Contracts: " in out, out[-2000:]
    for module in ("core.auxiliaries.data_builder", "core.auxiliaries.model_builder",
                   "core.data.base_data", "core.data.utils", "core.fed_runner",
                   "core.communication.local", "core.configs.config", "core.configs.cfg_data"):
        assert f"federatedscope.{module} ->" not in out, module


def test_the_repository_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
