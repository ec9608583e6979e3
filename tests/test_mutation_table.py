"""The mutation tool's retry bookkeeping: which verdicts a rerun in a kept scratch copy trusts."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "tools"))
import mutation_table as mt  # noqa: E402


def _scratch(tmp_path, codes: dict, stats: bool = True):
    d = tmp_path / "mutants" / "federatedscope" / "core"
    d.mkdir(parents=True)
    (d / "codec.py.meta").write_text(json.dumps({"exit_code_by_key": codes, "keep": 7}))
    if stats:
        (tmp_path / "mutants" / "mutmut-stats.json").write_text("{}")
    return d / "codec.py.meta"


def _codes(meta):
    return json.loads(meta.read_text())["exit_code_by_key"]


def test_a_plain_retry_keeps_kills_and_timeouts_and_resets_survivors_and_untested(tmp_path):
    codes = {"a": 1, "b": 0, "c": 33, "d": -24, "e": 36, "f": 255, "g": 3, "h": None}
    meta = _scratch(tmp_path, codes)
    assert mt.reset_for_retry(str(tmp_path)) == 2
    assert _codes(meta) == dict(codes, b=None, c=None)
    assert json.loads(meta.read_text())["keep"] == 7           # the rest of the record stays
    assert not (tmp_path / "mutants" / "mutmut-stats.json").exists()   # test map rebuilt


def test_retrying_timeouts_resets_every_timeout_code_but_never_a_kill(tmp_path):
    codes = {"a": 1, "b": 0, "c": 33, "d": -24, "e": 24, "f": 152, "g": 255, "h": 36, "i": 3}
    meta = _scratch(tmp_path, codes)
    n = mt.reset_for_retry(str(tmp_path), mt.RETRY_CODES + mt.TIMEOUT_CODES)
    assert n == 7
    assert _codes(meta) == {"a": 1, "b": None, "c": None, "d": None, "e": None, "f": None,
                            "g": None, "h": None, "i": 3}


def test_nothing_to_retry_keeps_the_stats(tmp_path):
    _scratch(tmp_path, {"a": 1, "b": -24})
    assert mt.reset_for_retry(str(tmp_path)) == 0
    assert (tmp_path / "mutants" / "mutmut-stats.json").exists()


def test_the_scratch_config_carries_the_time_limit():
    mod = mt.MODULES["codec"]
    assert "timeout_multiplier = 5\n" in mt._config(mod, mt.TIMEOUT_MULTIPLIER)
    assert "timeout_multiplier = 25\n" in mt._config(mod, mt.RETRY_TIMEOUT_MULTIPLIER)


def test_a_kept_scratch_copy_sums_the_seconds_of_every_invocation(tmp_path):
    # the first run of a module took 100 s, two retries 47 s and 3.5 s: its row says 150.5
    assert mt._add_seconds(str(tmp_path), 100.0) == 100.0
    assert mt._add_seconds(str(tmp_path), 47.0) == 147.0
    assert mt._add_seconds(str(tmp_path), 3.5) == 150.5
    assert (tmp_path / "mutation-seconds.txt").read_text() == "150.5"
    assert not (tmp_path / "mutation-seconds.txt.tmp").exists()


def test_every_row_names_files_that_exist():
    # a row whose glob matches nothing mutates nothing, and one naming a missing test file fails
    # mutmut's clean run only when someone runs that row: both are caught here instead
    import fnmatch
    import subprocess
    tracked = subprocess.run(["git", "ls-files", "federatedscope"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for name, mod in mt.MODULES.items():
        for g in mod.globs:
            assert any(fnmatch.fnmatch(f, g) for f in tracked), (name, g)
        for t in mod.tests:
            assert os.path.isfile(os.path.join(ROOT, t)), (name, t)
