"""sharding: ``prepare_femnist_shards.py`` on LEAF JSON vs parsing the same files (the floors).

The honest floor is a parse with the tool's own ``parse_float`` hook (``leaf_femnist._load_json``,
interning the ~256 distinct pixel literals): the ratio against it is what the tool costs beyond
reading its input. The bare ``json.load`` pass is kept, labelled, as what a naive reader pays.
All run as child processes over the same page-cached files, timed after their imports; peak RSS
is each process's growth above its own post-import RSS, in private pages (``child.py``). The tool
also runs on a third of the files (the largest among them): the peak must follow the largest
file, not the data set.
"""
import os
import shutil

from bench import common
from bench.common import MB, median, row

TITLE = "Sharding throughput and memory vs parsing the same files (tool's hook; bare json.load)"
THROUGHPUT_GOAL = 0.8
BYTES_PER_SAMPLE_GOAL = 800
PEAK_GROWTH_GOAL = 1.25  # peak on 3x the data / peak on 1x, same file size: bounded by the file


def files_of(root: str) -> list:
    from federatedscope.cv.dataset.leaf_femnist import list_leaf_files
    return list_leaf_files(os.path.join(root, "femnist", "raw"))


def subset_root(ctx, name: str, files) -> str:
    """A data root ``<tmp>/<name>`` whose femnist/raw holds these LEAF files (hard links)."""
    raw = ctx.tmp(f"{name}/femnist/raw")
    os.makedirs(raw)
    for f in files:
        try:
            os.link(f, os.path.join(raw, os.path.basename(f)))
        except OSError:
            shutil.copyfile(f, os.path.join(raw, os.path.basename(f)))
    return ctx.tmp(name)


def warm(files) -> None:
    for p in files:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


# the tool parsing in its own process, as the floors do (its default, 2 workers for an input of
# 64 MiB or more, is fullsize's)
ONE_PROCESS = ("--workers", "1")


def tool_run(ctx, tag: str, root: str, clients: int, timeout: float = 600,
             strategy=("--strategy", "sequential"), mode: str = "script", extra=()) -> dict:
    """The tool as a child process into ``<tag>_shards`` (seed 0); its report gains samples,
    disk bytes and samples/s. ``mode`` "profile": under cProfile."""
    out = ctx.tmp(f"{tag}_shards")
    rep = common.run_child(ctx, tag, mode, [
        common.PREPARE, "--root", root, "--clients", str(clients), "--out", out, *strategy,
        "--seed", "0", "--overwrite", "--no-progress", *extra], timeout=timeout)
    samples = sum(sum(c["num_samples"].values())
                  for c in common.read_json(os.path.join(out, "manifest.json"))["clients"])
    return dict(rep, out=out, samples=samples, disk_bytes=common.dir_bytes(out),
                pt_bytes=common.dir_bytes(out, ".pt"), samples_per_s=samples / rep["work_s"])


def floor_run(ctx, tag: str, files, hook: bool = False, timeout: float = 600) -> dict:
    rep = common.run_child(ctx, tag, "jsonhook" if hook else "jsonfloor", list(files),
                           timeout=timeout)
    return dict(rep, samples_per_s=rep["samples"] / rep["work_s"])


def run(ctx) -> dict:
    big = common.big_dataset(ctx)
    files_big = files_of(big)
    largest = max(files_big, key=os.path.getsize)
    third = [largest] + [f for f in files_big if f != largest][:max(0, len(files_big) // 3 - 1)]
    small = subset_root(ctx, "third", third)
    files_small = files_of(small)
    warm(files_big + files_small)
    tools, floors, hooks = [], [], []
    for i in range(1 if ctx.quick else 3):  # interleaved: noise hits all alike
        tools.append(tool_run(ctx, f"tool{i}", big, 3, extra=ONE_PROCESS))
        if not ctx.quick:  # --quick compares throughput on the third only (a third of the time)
            hooks.append(floor_run(ctx, f"hook{i}", files_big, hook=True))
            floors.append(floor_run(ctx, f"floor{i}", files_big))
    tool_small = tool_run(ctx, "tool_small", small, 3, extra=ONE_PROCESS)
    floor_small = floor_run(ctx, "floor_small", files_small)
    hook_small = floor_run(ctx, "hook_small", files_small, hook=True)
    t_set, f_set = (tools, floors) if floors else ([tool_small], [floor_small])
    h_set = hooks or [hook_small]
    which = (f"all {len(files_big)} files" if floors else
             f"{len(files_small)} of the {len(files_big)} files")
    sps = {k: median(r["samples_per_s"] for r in s)
           for k, s in (("tool", t_set), ("floor", f_set), ("hook", h_set))}
    peak = {k: median(r["peak_above_start_kb"] for r in s) * 1024
            for k, s in (("big", tools), ("small", [tool_small]), ("floor", f_set),
                         ("hook", h_set))}
    largest_b, data_bytes = os.path.getsize(largest), sum(map(os.path.getsize, files_big))
    t0 = tools[0]
    bps, growth = t0["disk_bytes"] / t0["samples"], peak["big"] / peak["small"]
    h_ratio, ratio = sps["tool"] / sps["hook"], sps["tool"] / sps["floor"]

    def peak_row(figure, other):
        r = peak["big"] / peak[other]
        return row(figure, r, f"{r:.3f} ({peak['big'] / MB:.1f} MB vs {peak[other] / MB:.1f} MB; "
                   f"largest file {largest_b / MB:.0f} MB)", "≤ 1.0 (no more than parsing one "
                   "file)", peak["big"] <= peak[other])
    rows = [
        row(f"throughput: tool / a parse of the same files with the tool's parse_float hook "
            f"({which})", h_ratio, f"{h_ratio:.2f} ({sps['tool']:,.0f} vs {sps['hook']:,.0f} "
            f"samples/s)", f"≥ {THROUGHPUT_GOAL}", h_ratio >= THROUGHPUT_GOAL, headline=True),
        row(f"throughput: tool / bare json.load pass, no hook (naive reader; {which})", ratio,
            f"{ratio:.2f} ({sps['tool']:,.0f} vs {sps['floor']:,.0f} samples/s)",
            f"≥ {THROUGHPUT_GOAL}", ratio >= THROUGHPUT_GOAL),
        row(f"peak RSS on all {len(files_big)} files / on {len(files_small)} of them (same largest "
            f"file)", growth, f"{growth:.2f} ({peak['big'] / MB:.0f} MB vs "
            f"{peak['small'] / MB:.0f} MB above runtime)",
            f"≤ {PEAK_GROWTH_GOAL} (bounded by the largest file, not the data set)",
            growth <= PEAK_GROWTH_GOAL),
        peak_row("peak RSS above runtime / peak of the hooked parse (the tool's own parser, one "
                 "file at a time)", "hook"),
        peak_row("peak RSS above runtime / the bare json.load pass's peak (naive reader)", "floor"),
        row("bytes per sample on disk (all shard files + manifest)", bps,
            f"{bps:.1f} B ({t0['disk_bytes'] / MB:.1f} MB for {t0['samples']:,} samples)",
            f"≤ {BYTES_PER_SAMPLE_GOAL} (uint8 28×28 + int64 label = 792)",
            bps <= BYTES_PER_SAMPLE_GOAL)]
    context = [
        f"Input: {len(files_big)} LEAF JSON files, {data_bytes / MB:.0f} MB, {t0['samples']:,} "
        f"samples (the third: {len(files_small)} files, {tool_small['samples']:,} samples); 3 "
        f"clients, sequential, --workers 1 (one process parsing: these rows compare what one "
        f"parse holds and costs; fullsize measures the default 2 workers); median of "
        f"{len(t_set)} interleaved run(s), files page-cached.",
        f"Work time on {which}: tool {median(r['work_s'] for r in t_set):.2f} s (+ "
        f"{median(r['wall_s'] - r['work_s'] for r in t_set):.1f} s imports), bare parse "
        f"{median(r['work_s'] for r in f_set):.2f} s; the hook alone makes the parse "
        f"{sps['hook'] / sps['floor']:.2f}× as fast as the bare one."]
    notes = [] if peak["big"] <= peak["hook"] else [
        f"Missed against the tool's own parser: the {(peak['big'] - peak['hook']) / MB:.1f} MB "
        f"between the two peaks is what sharding holds beside the parsed file (not broken down "
        f"here)."]
    return {"rows": rows, "context": context, "notes": notes,
            "raw": {"tool": tools, "floor": floors, "hooked_parse": hooks, "tool_small": tool_small,
                    "floor_small": floor_small, "hook_small": hook_small,
                    "largest_file_bytes": largest_b, "input_bytes": data_bytes},
            "summary": {"throughput_ratio": h_ratio, "throughput_ratio_bare_json": ratio,
                        "bytes_per_sample": bps}}
