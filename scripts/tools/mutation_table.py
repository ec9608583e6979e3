"""Mutation testing of the FL core, one module at a time: ``make mutation`` (or
``python scripts/tools/mutation_table.py [module ...]``).

For each module of ``MODULES`` (``mutation_modules.py``) the repository's files (``git ls-files``,
untracked included) are copied to a scratch directory, a ``[mutmut]`` section restricted to that
module and its FAST in-process tests is written there, and ``mutmut run`` mutates it (mutmut
runs, per mutant, only the selected tests that execute the mutated function). The killed /
survived / timeout counts and every survivor go to ``doc/mutation.md``; survivors listed with a
reason in ``doc/mutation_equivalent.txt`` (mutants that cannot change behaviour) are counted
apart, so a survivor in the table is a test gap. Exit 1 when a module has a non-equivalent survivor.
"""
import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from mutation_modules import MODULES, Module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = os.path.join(ROOT, "doc", "mutation.md")
EQUIVALENT = os.path.join(ROOT, "doc", "mutation_equivalent.txt")
STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "segfault",
            "not checked")


@dataclass
class Outcome:
    module: str
    counts: Dict[str, int] = field(default_factory=dict)
    survivors: List[str] = field(default_factory=list)      # not listed as equivalent
    diffs: Dict[str, str] = field(default_factory=dict)     # survivor -> `mutmut show` diff
    equivalent: List[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""


def copy_repo(dest: str) -> None:
    """The files git knows of (tracked + untracked, not ignored): what a fresh clone would hold
    plus the work in progress, without build outputs or earlier mutants."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for rel in (f.decode() for f in files if f):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src) and not os.path.islink(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def read_equivalent(path: str = EQUIVALENT) -> Dict[str, str]:
    """``mutant-name  reason`` per line; ``#`` starts a comment. A name without a reason is an
    error: each equivalence claim must say why."""
    out: Dict[str, str] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, reason = line.partition(" ")
            if not reason.strip():
                raise SystemExit(f"{path}:{n}: {name} has no reason; write why it is equivalent")
            out[name] = reason.strip()
    return out


def _config(module: Module, timeout_multiplier: float) -> str:
    lines = ["[mutmut]", "source_paths = federatedscope", "only_mutate ="]
    lines += [f"    {g}" for g in module.globs]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in module.tests]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -q",
              "    --hypothesis-profile=mutation"]
    lines += ["    -k", f"    {module.deselect}"] if module.deselect else []
    lines += ["also_copy =", "    scripts/", "    doc/", "    harness/",
              f"timeout_multiplier = {timeout_multiplier:g}", ""]
    return "\n".join(lines)


def parse_results(text: str) -> List[Tuple[str, str]]:
    """``mutmut results --all true`` lines ``    name: status`` -> [(name, status)]."""
    return [(m.group(1), m.group(2).strip())
            for m in re.finditer(r"^\s+(\S+): (.+)$", text, flags=re.M)]


# mutmut's exit codes of the mutants a rerun with more tests must try again: survived, no tests
RETRY_CODES = (0, 33)
# mutmut's exit codes it reads as "timeout": its own limit, SIGXCPU, 255. A tight CPU limit (the
# estimate comes from the tests' durations in the stats run) can stop a run whose mutant no test
# would catch, so a timeout is a verdict only after a rerun with a far larger limit.
TIMEOUT_CODES = (36, -24, 24, 152, 255)
TIMEOUT_MULTIPLIER, RETRY_TIMEOUT_MULTIPLIER = 5.0, 25.0


def reset_for_retry(dest: str, codes_to_retry: Sequence[int] = RETRY_CODES) -> int:
    """In a kept scratch directory, mark survivors and untested mutants (and, if asked, timed-out
    ones) as not checked, so the next ``mutmut run`` tests only them (with the current tests);
    killed mutants keep their verdict, which holds because tests are only ever added or made
    stricter."""
    n = 0
    for root, _, files in os.walk(os.path.join(dest, "mutants")):
        for fn in (f for f in files if f.endswith(".py.meta")):
            path = os.path.join(root, fn)
            with open(path) as f:
                meta = json.load(f)
            codes = meta.get("exit_code_by_key", {})
            retry = [k for k, v in codes.items() if v in codes_to_retry]
            for k in retry:
                codes[k] = None
            if retry:
                with open(path + ".tmp", "w") as f:
                    json.dump(meta, f)
                os.replace(path + ".tmp", path)
            n += len(retry)
    # the test -> function map is rebuilt from the current tests: mutmut only maps tests it has
    # not seen, and an edited test may now reach functions it did not
    stats = os.path.join(dest, "mutants", "mutmut-stats.json")
    if n and os.path.exists(stats):
        os.remove(stats)
    return n


@contextlib.contextmanager
def _scratch(name: str, reuse: str):
    if reuse:
        os.makedirs(reuse, exist_ok=True)
        yield reuse
    else:
        with tempfile.TemporaryDirectory(prefix=f"fs-mutmut-{name}-") as dest:
            yield dest


def _add_seconds(dest: str, seconds: float) -> float:
    """``seconds`` plus what earlier runs in ``dest`` took, written back to ``dest``."""
    path = os.path.join(dest, "mutation-seconds.txt")
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            seconds += float(f.read())
    with open(path + ".tmp", "w") as f:
        f.write(f"{seconds:.1f}")
    os.replace(path + ".tmp", path)
    return seconds


def run_module(name: str, module: Module, equivalent: Dict[str, str], children: int,
               reuse: str = "", retry_timeouts: bool = False) -> Outcome:
    out = Outcome(name)
    t0 = time.monotonic()
    with _scratch(name, reuse) as dest:
        copy_repo(dest)
        if reuse:
            codes = RETRY_CODES + (TIMEOUT_CODES if retry_timeouts else ())
            print(f"{name}: {reset_for_retry(dest, codes)} mutants to retry in "
                  f"{dest}", flush=True)
        cfg_path = os.path.join(dest, "setup.cfg")
        with open(cfg_path) as f:
            kept = re.sub(r"(?ms)^\[mutmut\].*?(?=^\[|\Z)", "", f.read())
        with open(cfg_path, "w") as f:
            f.write(kept + "\n" + _config(module, RETRY_TIMEOUT_MULTIPLIER if retry_timeouts
                                            else TIMEOUT_MULTIPLIER))
        # mutmut puts mutants/ first on sys.path itself; an inherited PYTHONPATH would let the
        # tests import the unmutated tree (and one naming mutants/ before it exists is cached
        # by the import system as "nothing there")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        mutmut = [sys.executable, "-m", "mutmut"]
        # output to a file, not a pipe: a mutant that leaves a forked worker behind (the shard
        # tool's reading pool) would hold a pipe open, and the wait for its end never ends
        run_log = os.path.join(dest, "mutmut-run.log")
        with open(run_log, "w") as log:
            subprocess.run(mutmut + ["run", "--max-children", str(children)], cwd=dest, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
        with open(run_log, errors="replace") as log:
            run_output = log.read()
        res = subprocess.run(mutmut + ["results", "--all", "true"], cwd=dest, env=env,
                             capture_output=True, text=True)
        results = parse_results(res.stdout)
        unchecked = sum(1 for _, status in results if status == "not checked")
        if not results or unchecked:
            # a run that checked nothing (its clean test run failed, or it was cut short) is an
            # error, never a row of zero survivors
            out.error = ([f"{unchecked} of {len(results)} mutants not checked"] if results else []) \
                + run_output.strip().splitlines()[-5:]
        for mutant, status in results:
            if status == "survived" and mutant not in equivalent:
                show = subprocess.run(mutmut + ["show", mutant], cwd=dest, env=env,
                                      capture_output=True, text=True).stdout
                out.diffs[mutant] = "\n".join(x for x in show.splitlines()
                                              if x.startswith(("+", "-", "@@"))
                                              and not x.startswith(("+++", "---")))
        # a kept scratch copy adds up every invocation's time: the row's seconds are what the
        # module's verdicts cost, not only the last retry's
        out.seconds = _add_seconds(dest, time.monotonic() - t0) if reuse \
            else time.monotonic() - t0
    for mutant, status in results:
        out.counts[status] = out.counts.get(status, 0) + 1
        if status == "survived":
            (out.equivalent if mutant in equivalent else out.survivors).append(mutant)
    return out


def _row(o: Outcome, when: str) -> str:
    c = o.counts
    if o.error:
        return f"| {o.module} | error: {' / '.join(o.error)} | | | | | | | {when} |"
    other = sum(v for k, v in c.items() if k not in ("killed", "survived", "timeout"))
    return (f"| {o.module} | {sum(c.values())} | {c.get('killed', 0)} | {len(o.survivors)} | "
            f"{len(o.equivalent)} | {c.get('timeout', 0)} | {other} | {o.seconds:.0f} | {when} |")


def _sections(o: Outcome) -> List[str]:
    if not o.survivors:
        return []
    lines = [f"## Survivors in {o.module}", ""]
    for name in o.survivors:
        lines += [f"- `{name}`", "", "  ```diff"]
        lines += [f"  {x}" for x in o.diffs.get(name, "").splitlines()] + ["  ```", ""]
    return lines


def _previous(path: str) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    """Rows and survivor sections of the modules in an existing table, so a run of some modules
    keeps the others' last results."""
    rows: Dict[str, str] = {}
    sections: Dict[str, List[str]] = {}
    if not os.path.exists(path):
        return rows, sections
    current = None
    with open(path) as f:
        for line in f.read().splitlines():
            m = re.match(r"^\| (\w+) \| (?!mutants)", line)
            if m and m.group(1) in MODULES:
                rows[m.group(1)] = line
            m = re.match(r"^## Survivors in (\w+)$", line)
            current = m.group(1) if m else (current if not line.startswith("## ") else None)
            if current:
                sections.setdefault(current, []).append(line)
    return rows, sections


def render(outcomes: Sequence[Outcome], previous: str = "") -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows, sections = _previous(previous) if previous else ({}, {})
    for o in outcomes:
        rows[o.module] = _row(o, when)
        sections[o.module] = _sections(o)
    out = ["# Mutation testing of the FL core", "",
           "Written by `make mutation` (`scripts/tools/mutation_table.py`; mutmut, one module at "
           "a time, against the fast in-process tests listed in `scripts/tools/mutation_modules.py`). "
           "*Equivalent* survivors are listed with their reason in "
           "[mutation_equivalent.txt](mutation_equivalent.txt); every other survivor is a bug "
           "the tests would let through. A timeout (the mutant pushed the tests past mutmut's CPU "
           "limit) counts as caught once it has timed out again under a 25 x limit "
           "(`--reuse DIR --retry-timeouts`): mutmut's limit is estimated from the tests' "
           "durations, and a run stopped by too tight a limit proves nothing. Modules without a "
           "row have not been run yet.", "",
           "Policy on message texts: an error message that names the file, field, client or "
           "fix is contract (an operator acts on it), so its mutants must be killed by a test "
           "that reads the text. Texts no program or person acts on word for word (argparse "
           "help and descriptions) carry `# pragma: no mutate` in the source; any other such "
           "survivor is listed in mutation_equivalent.txt with its reason. Before/after tables "
           "per module: [mutation_history.md](mutation_history.md).", "",
           "| module | mutants | killed | survived | equivalent | timeout | other | seconds "
           "| run |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [rows[m] for m in MODULES if m in rows] + [""]
    for m in MODULES:
        out += sections.get(m, [])
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {list(MODULES)}")
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2,
                    help="mutants tested in parallel (mutmut --max-children)")
    ap.add_argument("--table", default=TABLE, help="where to write the table")
    ap.add_argument("--reuse", metavar="DIR", default="",
                    help="keep the scratch copy in DIR (one module); a later run with the same "
                         "test files list retries only survivors and untested mutants there")
    ap.add_argument("--retry-timeouts", action="store_true",
                    help=f"with --reuse: also retry timed-out mutants, under a "
                         f"{RETRY_TIMEOUT_MULTIPLIER:g} x time limit instead of {TIMEOUT_MULTIPLIER:g} x")
    args = ap.parse_args(argv)
    if args.reuse and len(args.modules) != 1:
        print("--reuse keeps one module's scratch copy: name exactly one module")
        return 2
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        print(f"unknown module(s) {sorted(unknown)}; known: {list(MODULES)}")
        return 2
    equivalent = read_equivalent()
    outcomes = []
    for name in args.modules or list(MODULES):
        o = run_module(name, MODULES[name], equivalent, args.children, args.reuse,
                       args.retry_timeouts)
        outcomes.append(o)
        print(f"{name:12s} {o.counts} survivors={len(o.survivors)} in {o.seconds:.0f}s"
              + (f" ERROR {o.error}" if o.error else ""), flush=True)
        with open(args.table + ".tmp", "w") as f:        # after each module: a long run that is
            f.write(render([o], args.table))              # stopped keeps what it finished
        os.replace(args.table + ".tmp", args.table)
    print(f"wrote {args.table}")
    return 1 if any(o.survivors or o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
