"""One-command mutation check: ``make mutants`` (or ``python tests/mutants.py [names...]``).

Each mutant below breaks one thing the docs promise. For each, the repository's files
(``git ls-files``) are copied to a temp dir, the one exact text replacement is applied, and the
named tests are run there; the mutant is CAUGHT when they fail, SURVIVED when they pass. A control
run (no mutant) first proves the same tests pass on the unmutated copy, so "caught" means "caught
by the assertion", not "broken anyway". Exit 1 if any mutant survives, 2 if a mutant's old text is
no longer in its file (the table needs updating after a refactor: edit MUTANTS, nothing else).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str            # relative to the repository root
    old: str             # exact text; must occur exactly once in the file
    new: str
    tests: Sequence[str]  # pytest node ids that must fail with the mutant applied


# ------------------------------------------------------------------- the table (edit here)
FUZZ_JOINED = "tests/test_fuzz.py::test_malformed_updates_from_a_joined_client_are_rejected"
CORE = "tests/test_server_core.py::"
STRATEGY = "tests/test_server_strategy.py::"
MUTANTS: List[Mutant] = [
    # --- the four of issue 9
    Mutant("fedavg-equal-weights", "federatedscope/core/aggregators/fedavg.py",
           "weights = [(w / total) if total > 0 else 1.0 / len(feedback) for _, w, _ in feedback]",
           "weights = [1.0 / len(feedback) for _ in feedback]",
           [CORE + "test_fedavg_is_sample_weighted_exactly"]),
    Mutant("accept-every-update", "federatedscope/core/workers/validation.py",
           "    got = tensors or {}\n    shared = ",
           "    return None\n    got = tensors or {}\n    shared = ",
           [CORE + "test_every_bad_update_of_a_joined_client_is_rejected"]),
    Mutant("skip-manifest-comparison", "federatedscope/core/workers/admission.py",
           "reasons = check_declaration(self.manifest.get(cid), decl, self.sample_type)\n"
           "            if reasons:\n                text",
           "reasons = []\n            if reasons:\n                text",
           ["tests/test_auth.py::test_admission_rules",
            "tests/test_server_admission.py::test_strict_server_refuses_a_lie_and_tells_the_peer"
            "_only_the_class"]),
    Mutant("client-loads-next-shard", "federatedscope/core/data/distributed_loader.py",
           "return cls(dd.shard_path if shard_path is None else shard_path, client_id=cid,",
           "return cls((dd.shard_path.rstrip('/')[:-1] + str(cid % 3 + 1)) if shard_path is None"
           " else shard_path, client_id=cid,",
           ["tests/test_fs_seams.py::test_get_data_shard_client_skips_the_centralised_path"]),
    # --- the rest of the server's promises (issue 8)
    Mutant("accept-every-metric", "federatedscope/core/workers/validation.py",
           '    if not isinstance(results, dict) or not results:\n        return "no metrics"',
           '    return None\n    if not isinstance(results, dict) or not results:\n'
           '        return "no metrics"',
           [CORE + "test_fake_metrics_are_refused_and_the_line_says_who_is_missing"]),
    Mutant("no-evaluation-timeout", "federatedscope/core/workers/server_liveness.py",
           "    return min(limits) if limits else 0.0",
           "    return 0.0",
           [CORE + "test_an_evaluation_that_never_comes_back_times_out"]),
    Mutant("no-cap-on-unverified-counts", "federatedscope/core/aggregators/aggregator.py",
           "        if verified or not self.distributed:\n            return size",
           "        if True:\n            return size",
           [CORE + "test_a_claimed_billion_samples_cannot_buy_the_model_in_data_idx_mode"]),
    Mutant("robust-rule-ignored", "federatedscope/core/auxiliaries/aggregator_builder.py",
           "        return RobustAggregator(config, rule, args, distributed, opt)",
           "        return ClientsAvgAggregator(config, distributed, opt)",
           [CORE + "test_robust_rules_bound_a_byzantine_update"]),
    Mutant("token-not-checked", "federatedscope/core/workers/admission.py",
           "        problem = self._check_token(claimed, token, content)",
           '        problem = ""',
           [CORE + "test_any_token_string_is_compared_safely"]),
    Mutant("owed-evaluation-forgotten", "federatedscope/core/workers/server.py",
           "self.state.round, self.state.eval_owed = restored.round, restored.eval_owed",
           "self.state.round, self.state.eval_owed = restored.round, None",
           ["tests/test_server_recovery.py::test_kill_between_aggregation_and_evaluation_redoes"
            "_the_owed_evaluation"]),
    Mutant("no-per-event-guard", "federatedscope/core/workers/server.py",
           "        try:\n            self._route(event)\n        except Exception as e:",
           "        try:\n            self._route(event)\n        except ZeroDivisionError as e:",
           [CORE + "test_one_bad_event_closes_that_connection_not_the_server"]),
    # --- the round strategy and the server's outcomes
    Mutant("fedopt-state-not-restored", "federatedscope/core/workers/server_store.py",
           "        aggregator.load_state_dict(ckpt.aggregator)",
           "        aggregator.load_state_dict({})",
           [STRATEGY + "test_fedopt_momentum_is_restored_from_the_checkpoint"]),
    Mutant("krum-precondition-unchecked", "federatedscope/core/aggregators/robust.py",
           '    if rule == "krum" and f and n <= 2 * f + 2:',
           "    if False:",
           [STRATEGY + "test_each_robust_rule_checks_its_precondition_at_start"]),
    Mutant("diverged-round-pauses", "federatedscope/core/workers/server.py",
           "        if not got and st.refused and set(st.refused) == st.sampled:",
           "        if False:",
           ["tests/test_server_outcomes.py::test_a_round_whose_every_update_diverged_exits_5"]),
    Mutant("evaluation-waits-on-its-write", "federatedscope/core/workers/server.py",
           "        self._write_results()\n        self._checkpoint()\n        self._resume()",
           "        if not self._write_results():\n            return\n        self._checkpoint()\n"
           "        self._resume()",
           ["tests/test_server_outcomes.py::test_an_unwritable_results_log_blames_nobody_and_the_job"
            "_ends_with_exit_4"]),
]
TIMEOUT_S = 300


# ------------------------------------------------------------------- the runner
def _copy_repo(dest: str) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for rel in (f.decode() for f in files if f):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue                      # deleted in the work tree but still in the index
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def _apply(dest: str, m: Mutant) -> None:
    path = os.path.join(dest, m.path)
    with open(path) as f:
        text = f.read()
    if text.count(m.old) != 1:
        print(f"STALE    {m.name}: its old text occurs {text.count(m.old)} times in {m.path}; "
              f"update MUTANTS in tests/mutants.py", flush=True)
        sys.exit(2)
    with open(path, "w") as f:
        f.write(text.replace(m.old, m.new))


def _pytest(dest: str, tests: Sequence[str]) -> "tuple[int, float, str]":
    env = dict(os.environ, PYTHONPATH=dest, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    # Its own session: on timeout we kill exactly that process group (pytest and the servers and
    # clients it started), nothing else.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                             "--basetemp", os.path.join(dest, ".pytest_tmp")] + list(tests),
                            cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code, out = -1, f"timed out after {TIMEOUT_S}s\n{out}"
    lines = [x for x in out.splitlines() if x.startswith(("FAILED", "ERROR", "E "))]
    summary = (lines[0] if lines else out.strip().splitlines()[-1] if out.strip() else "")[:160]
    return code, time.monotonic() - t0, summary


def _imports_from(dest: str) -> str:
    env = dict(os.environ, PYTHONPATH=dest)
    return subprocess.run([sys.executable, "-c", "import federatedscope; print(federatedscope.__file__)"],
                          cwd=dest, env=env, capture_output=True, text=True).stdout.strip()


def run(mutants: Sequence[Mutant], control: bool) -> int:
    survived = 0
    if control:
        with tempfile.TemporaryDirectory(prefix="fs-mutant-control-") as dest:
            _copy_repo(dest)
            where = _imports_from(dest)
            if not where.startswith(dest):
                print(f"ERROR: the copy imports federatedscope from {where}, not {dest}")
                return 2
            tests = sorted({t for m in mutants for t in m.tests})
            code, took, summary = _pytest(dest, tests)
            print(f"CONTROL  {'passed' if code == 0 else 'FAILED'} in {took:5.1f}s "
                  f"({len(tests)} tests, no mutant) {'' if code == 0 else summary}", flush=True)
            if code != 0:
                return 2
    for m in mutants:
        with tempfile.TemporaryDirectory(prefix=f"fs-mutant-{m.name}-") as dest:
            _copy_repo(dest)
            _apply(dest, m)
            code, took, summary = _pytest(dest, m.tests)
            caught = code != 0
            survived += not caught
            print(f"{'CAUGHT  ' if caught else 'SURVIVED'} {m.name:26s} in {took:5.1f}s  {summary}",
                  flush=True)
    print(f"{len(mutants) - survived}/{len(mutants)} mutants caught")
    return 1 if survived else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only these mutants (default: all)")
    ap.add_argument("--no-control", action="store_true", help="skip the unmutated control run")
    args = ap.parse_args(argv)
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        print(f"unknown mutant(s) {sorted(unknown)}; known: {[m.name for m in MUTANTS]}")
        return 2
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    return run(chosen, control=not args.no_control)


if __name__ == "__main__":
    sys.exit(main())
