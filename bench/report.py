"""Regenerate the Markdown report from every ``<name>.json`` in the results directory."""
import glob
import json
import os
from typing import List

from bench.child import write_text

MARK = {True: "✅ met", False: "❌ missed", None: "—"}
# Cheap ones first, so a broken environment shows up fast (bench/run.py runs them in this order).
ORDER = ["wire", "manifest_scale", "idle_cpu", "sharding", "client_memory", "server_memory",
         "streaming", "round_time", "scale", "peers"]
# Run only when named (bench/run.py --only NAME): each takes longer than the whole default suite.
EXTRA = ["fullsize"]


def load(results_dir: str) -> List[dict]:
    found = {}
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(res, dict) and "name" in res and "rows" in res:
            found[res["name"]] = res
    rank = {n: i for i, n in enumerate(ORDER + EXTRA)}
    return sorted(found.values(), key=lambda r: (rank.get(r["name"], len(rank)), r["name"]))


def _esc(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md(header: List[str], rows) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(_esc(c) for c in r) + " |" for r in rows]


def missed_rows(results: List[dict]) -> "tuple[list, int]":
    """([(benchmark, row) of every missed goal], number of rows in all)."""
    return ([(res["name"], r) for res in results for r in res.get("rows", []) if r["met"] is False],
            sum(len(res.get("rows", [])) for res in results))


def run_kind(r: dict) -> str:
    return "quick" if r.get("quick") else "full"


def commit(m: dict) -> str:
    """The first 10 digits of the commit a result's ``machine`` measured."""
    return str(m.get("git_commit"))[:10]


def _provenance(results: List[dict]) -> List[str]:
    """Which commit, tree state, machine and load each JSON was measured with."""
    commits = {(commit(r["machine"]), r["machine"].get("git_dirty")) for r in results}
    out = ["## What was measured", ""]
    if len(commits) == 1:
        (c, dirty), = commits
        out.append(f"All results below measured commit `{c}`"
                   f"{' with local changes (dirty tree)' if dirty else ' (clean tree)'}.")
    else:
        out.append(f"**The results come from {len(commits)} different commits/tree states** "
                   f"(see the table); regenerate with `make bench` for one consistent set.")
    profile = {"quick": "quick runs use the 180-writer sample (~36,000 samples) and, for peers, "
                        "ConvNet2 hidden 128 and 2 rounds",
               "full": "full runs use the `large` profile (200 writers, ~45,000 samples) for the "
                       "memory, round and peer figures, and hidden 2048 and 5 rounds for peers"}
    kinds = sorted(set(map(run_kind, results)))
    out += ["", "Data profile: " + "; ".join(profile[k] for k in kinds) + ".", ""]
    rows = [[r["name"], run_kind(r), r.get("started", "?"), f"`{commit(m)}`",
             {True: "dirty", False: "clean"}.get(m.get("git_dirty"), "?"),
             m.get("cpus_usable"), f"{m['loadavg_at_bench_start'][0]:.2f}"]
            for r in results for m in [r["machine"]]]
    return out + _md(["benchmark", "run", "started (UTC)", "commit", "tree", "CPUs",
                      "load (1 min) at its start"], rows) + [""]


def render_table(t: dict) -> List[str]:
    """A benchmark's extra table (``tables``: title, header, rows) as Markdown."""
    return [f"**{_esc(t['title'])}**", ""] + _md([_esc(h) for h in t["header"]], t["rows"]) + [""]


def headline_table(results: List[dict]) -> List[str]:
    """Every headline row of every benchmark (misses included), and a row per failed one."""
    rows = []
    for res in results:
        rows += [[res["name"], r["figure"], r["display"], r["goal"], MARK[r["met"]]]
                 for r in res.get("rows", []) if r.get("headline")]
        if res.get("error"):
            rows.append([res["name"], "benchmark failed to run", "—", "—", "❌ missed"])
    return _md(["benchmark", "figure", "value", "goal", "status"], rows)


def _section(res: dict, rel_plots: str) -> List[str]:
    m = res["machine"]
    out = [f'<a id="{res["name"]}"></a>', "", f"## {res['name']} — {res.get('title', '')}", "",
           f"_{run_kind(res)} run, {res.get('started', '?')}, {res.get('duration_s', 0):.0f} s; "
           f"{m.get('cpu_count')} CPUs ({m.get('cpu_model')}), {m.get('mem_total_mb')} MB RAM, "
           f"load {m.get('loadavg', [0])[0]:.2f} at start; Python {m.get('python')}, torch "
           f"{m.get('torch')}, grpcio {m.get('grpcio')}, protobuf {m.get('protobuf')}; "
           f"commit {commit(m)}{' (+ local changes)' if m.get('git_dirty') else ''}_", ""]
    if res.get("error"):
        out += ["**This benchmark failed to run:**", "", "```", res["error"].strip()[-1500:],
                "```", ""]
    for t in res.get("tables", []):
        out += render_table(t)
    if res.get("rows"):
        out += _md(["figure", "value", "goal", "status"], [
            [r["figure"], r["display"], r["goal"], MARK[r["met"]]] for r in res["rows"]]) + [""]
    out += [line for note in res.get("notes", []) for line in (f"> **Note:** {note}", "")]
    if res.get("context"):
        out += [f"- {c}" for c in res["context"]] + [""]
    return out + [line for p in res.get("plots", []) for line in (f"![{p}]({rel_plots}/{p})", "")]


def render(results: List[dict], rel_plots: str) -> str:
    out = ["# Benchmark report", "",
           "Generated by `python bench/run.py` from the JSON files in `bench/results/` "
           "(machine info, versions and every raw figure are in those files). Each benchmark "
           "measures its comparison inside one run (ratios, medians over repeats), because the "
           "2-core machine is shared and noisy. Every row states its goal and whether it was met.",
           ""]
    if not results:
        return "\n".join(out + ["No results yet: run `make bench`.", ""])
    out += _provenance(results) + ["## Headline figures", ""] + headline_table(results) + [""]
    missed, total = missed_rows(results)
    errors = [res["name"] for res in results if res.get("error")]
    out.append(f"**{total - len(missed)} of {total} goals met.**" + (
        " Missed (each section's notes say why and what would fix it):" if missed else ""))
    if missed:
        out += [""] + [f"- {n}: {_esc(r['figure'])} = {_esc(r['display'])} (goal "
                       f"{_esc(r['goal'])})" for n, r in missed]
    if errors:
        out.append(f"**Benchmarks that failed to run: {', '.join(errors)}** (see their JSON).")
    out.append("")
    for res in results:
        out += _section(res, rel_plots)
    return "\n".join(out)


def write(results_dir: str, report_path: str) -> None:
    rel = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(report_path)))
    write_text(report_path, render(load(results_dir), rel.replace(os.sep, "/")))
