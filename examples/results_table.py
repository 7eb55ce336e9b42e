#!/usr/bin/env python3
"""Write docs/results.md (and its plots) from the JSON records of grids run by
examples/run_grid.py: tiekd-eval's ``eval-*.json`` and the runner's ``train.json`` per run.

usage: python examples/results_table.py --work WORK/en-de [--work WORK/en-fr ...] [--out docs/results.md]
The first --work is the main language pair (sizes, equal-compute baselines, capacity gap); the
others are reported as further pairs. Nothing in the tables is typed by hand: rerun this after
the grid to regenerate them. A grid that has not finished is reported as such, with the runs
still missing.
"""
import argparse
import contextlib
import glob
import io
import json
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict

from run_grid import EQTIME, parse_args as grid_args, run_plan, validations  # the runner's names, plan and log reading

METHOD_NAMES = {  # display order
    "ce": "CE (no KD)",
    "word_kd": "word-KD",
    "seq_kd": "seq-KD",
    "tie_kd": "TIE-KD",
    "tie_kd_pool": "TIE-KD + pool",
    "ce_eqtime": "CE, TIE-KD's CPU time",
    "word_kd_eqtime": "word-KD, TIE-KD's CPU time",
}
COLOURS = {"ce": "C0", "word_kd": "C1", "seq_kd": "C2", "tie_kd": "C3", "tie_kd_pool": "C4"}  # one per method in every plot
PAPER = ("TIE-KD gains +1.04 (WMT'14 en-de), +0.60 (en-fr) and +1.11 (WMT'16 en-ro) BLEU over the "
         "student trained without KD, beats vanilla word-level KD on all three, and its gain holds "
         "better than other KD methods' as the teacher-student capacity gap changes. Setting: "
         "Transformer-big teacher, Transformer-base student (about 60M parameters), millions of sentence "
         "pairs, 200k updates on GPUs")
PAPER_STUDENT_PARAMS = 60e6
SIGNIFICANT = 0.05


def colour(method):
    return COLOURS.get(base_method(method))


def base_method(method):
    return method[:-len(EQTIME)] if method.endswith(EQTIME) else method


# ---------------------------------------------------------------- records

def load_records(work):
    """One dict per evaluated student run (its test-set tiekd-eval record plus the runner's
    train.json), and the teacher's record (or None), evaluated with the settings most runs have."""
    runs = {d: test_set_evaluations(d) for d in sorted(glob.glob(os.path.join(work, "runs", "*")))}
    common = Counter(evaluation_settings(r) for found in runs.values() for _, r in found)
    records = [_with_train_record(choose_evaluation(run_dir, found, common)) for run_dir, found in runs.items() if found]
    teacher_dir = os.path.join(work, "teacher")
    found = test_set_evaluations(teacher_dir)
    return records, (_with_train_record(choose_evaluation(teacher_dir, found, common)) if found else None)


def test_set_evaluations(run_dir):
    """[(path, record)] of a directory's test-set tiekd-eval records (``gen_subset``, or for
    older records the subset in the file name, eval-SUBSET-...)."""
    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "eval-*.json"))):
        with open(path) as f:
            record = json.load(f)
        subset = record.get("gen_subset") or re.match(r"eval-([^-.]*)", os.path.basename(path)).group(1)
        if subset == "test":
            out.append((path, record))
    return out


def evaluation_settings(record):
    return len(record.get("checkpoints") or []), record.get("beam"), record.get("lenpen")


def choose_evaluation(run_dir, found, common):
    """The evaluation with the settings most runs have (the newest of those), so that a run
    re-scored with another lenpen or beam does not enter the tables; the others are named on stderr."""
    path = max(found, key=lambda pr: (common[evaluation_settings(pr[1])], os.path.getmtime(pr[0])))[0]
    if len(found) > 1:
        print(f"results_table: {run_dir}: {len(found)} test evaluations; using {os.path.basename(path)} (the "
              f"settings most runs have), not " + ", ".join(os.path.basename(p) for p, _ in found if p != path),
              file=sys.stderr)
    return path


def _with_train_record(eval_path):
    with open(eval_path) as f:
        record = json.load(f)
    run_dir = os.path.dirname(eval_path)
    train = os.path.join(run_dir, "train.json")
    if os.path.exists(train):
        with open(train) as f:
            record.update({k: v for k, v in json.load(f).items() if k not in record})
    record["valid_curve"] = valid_curve(run_dir)
    record["valid_fall_1k"] = valid_fall(record["valid_curve"])
    if record.get("hyp") and record.get("ref"):
        record.update(length_stats(record["hyp"], record["ref"]))
    return record


def length_stats(hyp, ref):
    """BLEU's length terms of a run's translations: hypothesis/reference length (sacreBLEU's
    tokens) and the brevity penalty."""
    from sacrebleu.metrics import BLEU

    score = BLEU().corpus_score(read_lines(hyp), [read_lines(ref)])
    return {"length_ratio": score.sys_len / score.ref_len if score.ref_len else None, "brevity_penalty": score.bp}


def valid_curve(run_dir):
    """[(update, validation CE)] of a run, over every process of it (its train.log)."""
    path = os.path.join(run_dir, "train.log")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return validations(f.read())


def valid_fall(curve, span=1000):
    """How much the validation CE fell over the run's last ``span`` updates (> 0: still falling,
    i.e. not converged), or None if the run validated over a shorter stretch."""
    if not curve:
        return None
    end, loss = curve[-1]
    earlier = [x for u, x in curve if u <= end - span]
    return earlier[-1] - loss if earlier else None


def load_grid(work):
    path = os.path.join(work, "grid.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def planned_runs(grid):
    """[(name, size, method, seed)] the grid's last training invocation set out to do, or [] if
    unknown (no recorded options, or options this runner does not know)."""
    argv = next((i["argv"] for i in reversed(grid.get("invocations") or [])
                 if i.get("argv") is not None and "--evaluate-only" not in i["argv"]), None)
    if argv is None:
        return []
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text
            return run_plan(grid_args(argv))
    except SystemExit as e:
        print(f"results_table: the grid's recorded options cannot be planned by this runner ({e}); "
              "the runs still missing are not listed", file=sys.stderr)
        return []


def read_lines(path):
    """As ``tiekd_fairseq.evaluate.read_lines`` reads the same files when it scores them ("\n"
    ends a line, a CRLF ending loses its "\r"); not imported from there, because importing the
    plugin imports fairseq, whose logging setup floods this script's output."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


# ---------------------------------------------------------------- statistics

def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(records):
    """{(size, method): summary}: means and sample sds over seeds, and the paired differences
    to CE and word-KD over the seeds both have (``gain_over_ce``, ``..._sd``, ``..._n``)."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["size"], r["method"])].append(r)
    summary = {}
    for key, runs in groups.items():
        s = {"seeds": sorted(r["seed"] for r in runs), "params": runs[0]["params"],
             "by_seed": {r["seed"]: r for r in runs},
             "stopped_by_patience": sum(r.get("stopped") == "patience" for r in runs),
             "at_cap": sum(r.get("stopped") == "max_update" for r in runs)}
        for field in ("bleu", "chrf", "teacher_top1_agree", "train_seconds", "cpu_seconds", "updates_per_second",
                      "peak_rss_mib", "num_updates", "best_valid_loss", "valid_fall_1k", "length_ratio",
                      "brevity_penalty"):
            values = [r.get(field) for r in runs]
            s[field], s[field + "_sd"] = mean_sd(values)
            s[field + "_n"] = sum(v is not None for v in values)
        summary[key] = s
    for (size, method), s in summary.items():
        for base in ("ce", "word_kd", "tie_kd"):
            b = summary.get((size, base))
            for metric, name in (("bleu", f"gain_over_{base}"), ("chrf", f"chrf_gain_over_{base}")):
                if b is None or method == base:
                    s[name], s[name + "_sd"], s[name + "_n"] = None, None, 0
                    continue
                diffs = paired_differences(s, b, metric)
                s[name], s[name + "_sd"] = mean_sd(diffs)
                s[name + "_n"] = len(diffs)
    return summary


def paired_differences(s, base, metric):
    """Per-seed differences of a metric between two methods, over the seeds both have."""
    shared = sorted(set(s["by_seed"]) & set(base["by_seed"]))
    return [s["by_seed"][seed][metric] - base["by_seed"][seed][metric] for seed in shared
            if s["by_seed"][seed].get(metric) is not None and base["by_seed"][seed].get(metric) is not None]


def paired_bootstrap(records, system="tie_kd", baseline="word_kd", n_samples=1000):
    """sacreBLEU's paired bootstrap (``--paired-bs``) of system vs baseline, per size and seed."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    by_key = {(r["size"], r["method"], r["seed"]): r for r in records}
    order = {z: i for i, z in enumerate(sorted({r["size"] for r in records},
                                               key=lambda z: min(r["params"] for r in records if r["size"] == z)))}
    rows = []
    for (size, method, seed), r in sorted(by_key.items(), key=lambda kv: (order[kv[0][0]], kv[0][2])):
        base = by_key.get((size, baseline, seed))
        if method != system or base is None:
            continue
        refs = read_lines(r["ref"])
        test = PairedTest([(f"Baseline: {baseline}", read_lines(base["hyp"])), (system, read_lines(r["hyp"]))],
                          {"BLEU": BLEU(references=[refs]), "chrF": CHRF(references=[refs])},
                          references=None, test_type="bs", n_samples=n_samples)
        signatures, scores = test()
        rows.append({"size": size, "seed": seed, "system": system, "baseline": baseline, "n_samples": n_samples, **{
            name: {"baseline": scores[name][0].score, "system": scores[name][1].score,
                   "p_value": scores[name][1].p_value, "signature": str(sig)}
            for name, sig in signatures.items()}})
    return rows


def significantly_better(row, metric):
    return row[metric]["p_value"] < SIGNIFICANT and row[metric]["system"] > row[metric]["baseline"]


def wins(rows, size, metric):
    """Seeds where the system is significantly better (p < 0.05), out of the seeds compared."""
    sig = [r for r in rows if r["size"] == size]
    return sum(significantly_better(r, metric) for r in sig), len(sig)


def losses(rows, size, metric):
    """Seeds where the system is significantly worse."""
    return sum(r[metric]["p_value"] < SIGNIFICANT and r[metric]["system"] < r[metric]["baseline"]
               for r in rows if r["size"] == size)


# ---------------------------------------------------------------- formatting

def fmt(mean, sd=None, digits=2):
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def signed(x, sd=None):
    if x is None:
        return "—"
    return f"{x:+.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def gain(s, name, seeds=None):
    """A paired difference as "+1.23 ± 0.45", with "(n=K)" when it covers fewer seeds than the row."""
    if s.get(name) is None:
        return "—"
    n = s[name + "_n"]
    return signed(s[name], s[name + "_sd"]) + (f" (n={n})" if seeds is not None and n < seeds else "")


def p_value(row, metric):
    """sacreBLEU's p; its smallest value is 1 / (resamples + 1)."""
    p = row[metric]["p_value"]
    floor = 1 / (row["n_samples"] + 1)
    return f"≤ {floor:.3f}" if p <= floor + 1e-12 else f"{p:.3f}"


def hours(seconds):
    return None if seconds is None else seconds / 3600


def sizes_in_order(summary):
    return sorted({size for size, _ in summary},
                  key=lambda size: min(s["params"] for (z, _), s in summary.items() if z == size))


def all_at_cap(summary):
    trained = [s for (_, m), s in summary.items() if not m.endswith(EQTIME)]
    return bool(trained) and all(s["at_cap"] == len(s["seeds"]) for s in trained)


# ---------------------------------------------------------------- tables

def results_table(summary, methods=None):
    lines = ["| student | params | method | seeds | BLEU | chrF | Δ BLEU vs CE | Δ BLEU vs word-KD | Δ chrF vs word-KD "
             "| hyp/ref length | updates | stopped by patience | best valid CE (bits) | valid CE fall, last 1k updates "
             "| teacher top-1 agree | CPU-h | wall h | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sizes_in_order(summary):
        for method in methods or METHOD_NAMES:
            s = summary.get((size, method))
            if s is None:
                continue
            n = len(s["seeds"])
            cpu = fmt(hours(s["cpu_seconds"])) + (f" (n={s['cpu_seconds_n']})" if 0 < s["cpu_seconds_n"] < n else "")
            lines.append(
                f"| {size} | {s['params'] / 1e6:.2f}M | {METHOD_NAMES[method]} | {n} "
                f"| {fmt(s['bleu'], s['bleu_sd'])} | {fmt(s['chrf'], s['chrf_sd'])} "
                f"| {gain(s, 'gain_over_ce', n)} | {gain(s, 'gain_over_word_kd', n)} "
                f"| {gain(s, 'chrf_gain_over_word_kd', n)} "
                f"| {fmt(s['length_ratio'], digits=3)} | {fmt(s['num_updates'], digits=0)} "
                f"| {s['stopped_by_patience']} of {n} "
                f"| {fmt(s['best_valid_loss'], digits=3)} | {fmt(s['valid_fall_1k'], digits=3)} "
                f"| {fmt(s['teacher_top1_agree'], digits=3)} "
                f"| {cpu} | {fmt(hours(s['train_seconds']))} "
                f"| {fmt(s['peak_rss_mib'], digits=0)} |")
    return "\n".join(lines)


TABLE_NOTES = (
    "Columns: BLEU and chrF are means ± sample sd over seeds. Δ columns are paired: the mean ± sd over "
    "seeds of the per-seed difference, over the seeds both methods have ((n=K) when fewer than the row's). "
    "hyp/ref length: the translations' length over the references' (sacreBLEU's tokens; below 1, BLEU's "
    "brevity penalty applies). best valid CE: the lowest label-smoothed CE on the validation references "
    "(for seq-KD too, which trains on the teacher's translations instead). valid CE fall: how much it still "
    "fell over the run's last 1,000 updates (> 0: not converged). teacher top-1 agree: the share of test "
    "positions where the student's argmax equals the teacher's, both fed the reference prefix. CPU-h: the "
    "training process's own CPU time (user + system); wall h: its wall time, which counts the time it "
    "waited for a core (more runs than cores at times) or was paused, so it is not a measure of cost here.")


def bootstrap_table(rows):
    base = METHOD_NAMES[rows[0]["baseline"]] if rows else "baseline"
    system = METHOD_NAMES[rows[0]["system"]] if rows else "system"
    lines = [f"| student | seed | {base} BLEU | {system} BLEU | Δ BLEU | p (BLEU) | {base} chrF | {system} chrF "
             "| Δ chrF | p (chrF) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, c = r["BLEU"], r["chrF2"]
        lines.append(f"| {r['size']} | {r['seed']} | {b['baseline']:.2f} | {b['system']:.2f} "
                     f"| {b['system'] - b['baseline']:+.2f} | {p_value(r, 'BLEU')} "
                     f"| {c['baseline']:.2f} | {c['system']:.2f} | {c['system'] - c['baseline']:+.2f} "
                     f"| {p_value(r, 'chrF2')} |")
    return "\n".join(lines)


def bootstrap_section(title, rows):
    if not rows:
        return []
    return [f"{title} (sacreBLEU's paired bootstrap, `--paired-bs`, {rows[0]['n_samples']} resamples, "
            f"per seed: it measures the test set's sampling, not training variance, which the seeds' "
            f"spread shows):", "", bootstrap_table(rows), ""]


def equal_compute_table(summary, size):
    rows = ["| method | seeds | updates | CPU-h | CPU / TIE-KD's (paired) | wall h | BLEU | chrF "
            "| TIE-KD minus row, BLEU (paired) | TIE-KD minus row, chrF |", "|---|---|---|---|---|---|---|---|---|---|"]
    tie = summary.get((size, "tie_kd"))
    for method in ("ce", "ce_eqtime", "word_kd", "word_kd_eqtime", "tie_kd"):
        s = summary.get((size, method))
        if s is None:
            continue
        ratio = None
        if tie and method != "tie_kd":
            shared = [seed for seed in s["by_seed"] if seed in tie["by_seed"]
                      and s["by_seed"][seed].get("cpu_seconds") and tie["by_seed"][seed].get("cpu_seconds")]
            ratio = mean_sd([s["by_seed"][x]["cpu_seconds"] / tie["by_seed"][x]["cpu_seconds"] for x in shared])[0]
        rows.append(f"| {METHOD_NAMES[method]} | {len(s['seeds'])} | {fmt(s['num_updates'], digits=0)} "
                    f"| {fmt(hours(s['cpu_seconds']))} | {fmt(ratio)} | {fmt(hours(s['train_seconds']))} "
                    f"| {fmt(s['bleu'], s['bleu_sd'])} | {fmt(s['chrf'], s['chrf_sd'])} "
                    f"| {gain(negated(s, 'gain_over_tie_kd'), 'gain_over_tie_kd', len(s['seeds']))} "
                    f"| {gain(negated(s, 'chrf_gain_over_tie_kd'), 'chrf_gain_over_tie_kd', len(s['seeds']))} |")
    return "\n".join(rows)


def negated(s, name):
    """The paired difference TIE-KD minus the row (the row stores row minus TIE-KD)."""
    return {name: None if s.get(name) is None else -s[name], name + "_sd": s.get(name + "_sd"),
            name + "_n": s.get(name + "_n", 0)}


# ---------------------------------------------------------------- plots

def capacity_gap_plot(summary, teacher_params, path):
    """Each KD method's paired BLEU gain over CE (mean ± sd over seeds) against the
    teacher/student parameter ratio, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sizes_in_order(summary)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHOD_NAMES:
        if method == "ce" or method.endswith(EQTIME):
            continue
        points = sorted((teacher_params / summary[(z, method)]["params"], summary[(z, method)]["gain_over_ce"],
                         summary[(z, method)]["gain_over_ce_sd"] or 0)
                        for z in sizes if (z, method) in summary and summary[(z, method)]["gain_over_ce"] is not None)
        if points:
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colour(method), label=METHOD_NAMES[method])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("capacity gap: teacher / student parameters (log scale)")
    ax.set_ylabel("BLEU gain over CE (paired, mean ± sd)")
    ax.set_title("Gain of each KD method vs the teacher-student gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compute_plot(summary, path, main_size=None):
    """BLEU against training CPU-hours, mean over seeds: every method at every size (a dotted
    line through a method's sizes), and at the main size a solid line from each method's run at
    the update cap to the same method given TIE-KD's CPU time (squares)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHOD_NAMES:
        if method.endswith(EQTIME):
            continue
        points = [(hours(summary[(z, method)]["cpu_seconds"]), summary[(z, method)]["bleu"], z)
                  for z in sizes_in_order(summary)
                  if (z, method) in summary and summary[(z, method)]["cpu_seconds"] is not None]
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle=":", color=colour(method),
                label=METHOD_NAMES[method])
        for x, y, z in points:
            ax.annotate(z, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colour(method))
        at_cap, eq = summary.get((main_size, method)), summary.get((main_size, method + EQTIME))
        if at_cap and eq and at_cap["cpu_seconds"] and eq["cpu_seconds"]:
            xs, ys = [hours(at_cap["cpu_seconds"]), hours(eq["cpu_seconds"])], [at_cap["bleu"], eq["bleu"]]
            ax.plot(xs, ys, linestyle="-", color=colour(method))
            ax.plot(xs[1:], ys[1:], marker="s", markersize=8, linestyle="", color=colour(method))
            ax.annotate(f"{main_size}, TIE-KD's CPU time", (xs[1], ys[1]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=colour(method))
    ax.set_xscale("log")
    ax.set_xlabel("training CPU-hours per run (log scale; mean over seeds)")
    ax.set_ylabel("test BLEU (mean over seeds)")
    ax.set_title("Quality against training compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_curve(runs):
    """[(CPU-hours, validation CE)] averaged over seeds at the updates every run validated at;
    a run's CPU time at update u is taken as its total x u / its updates (a steady rate)."""
    shared = set.intersection(*(set(u for u, _ in r["valid_curve"]) for r in runs))
    points = []
    for u in sorted(shared):
        cpu = [r["cpu_seconds"] * u / r["valid_curve"][-1][0] for r in runs]
        loss = [dict(r["valid_curve"])[u] for r in runs]
        points.append((hours(statistics.fmean(cpu)), statistics.fmean(loss)))
    return points


def learning_curve_plot(records, size, path):
    """Validation CE against training CPU-hours at one student size, a line per method (mean over
    seeds); the equal-compute runs are dashed, in their base method's colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHOD_NAMES:
        runs = [r for r in records if r["size"] == size and r["method"] == method
                and r["valid_curve"] and r.get("cpu_seconds")]
        if not runs:
            continue
        ax.plot(*zip(*mean_curve(runs)), linestyle="--" if method.endswith(EQTIME) else "-",
                color=colour(method), label=METHOD_NAMES[method])
    ax.set_xscale("log")
    ax.set_xlabel("training CPU-hours (log scale; mean over seeds)")
    ax.set_ylabel("validation CE, label-smoothed (bits)")
    ax.set_title(f"Validation CE against training compute ({size} students)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- findings

def verdict(won, lost, n):
    """A claim's verdict from per-seed paired bootstraps: won / lost = seeds significantly
    better / worse, of n. One seed says nothing about training variance: said so."""
    if n == 0:
        return "untested"
    if won == n:
        text = "holds"
    elif won == 0:
        text = (f"does not hold (significantly worse in {lost} of {n} seeds)" if lost else
                "not shown (no seed significantly different)")
    else:
        text = "mixed"
    return text + (" (1 seed only)" if n == 1 else "")


def fall_text(fall):
    return (f"still fell {fall:.3f} bits" if fall > 0 else f"rose {-fall:.3f} bits" if fall < 0 else "did not change")


def convergence_line(summary):
    trained = [s for (_, m), s in summary.items() if not m.endswith(EQTIME)]
    n_runs = sum(len(s["seeds"]) for s in trained)
    capped = [r for s in trained for r in s["by_seed"].values() if r.get("stopped") == "max_update"]
    falls = [r["valid_fall_1k"] for r in capped if r.get("valid_fall_1k") is not None]
    caps = sorted({r["num_updates"] for r in capped if r.get("num_updates")})
    text = (f"{len(capped)} of {n_runs} students stopped at the update cap"
            + (f" ({', '.join(f'{c:,}' for c in caps)} updates)" if caps else "")
            + f", {sum(s['stopped_by_patience'] for s in trained)} because validation CE stopped improving")
    if falls:
        text += (f"; over the last 1,000 updates of those at the cap, validation CE " +
                 (f"still fell by {min(falls):.3f} to {max(falls):.3f} bits" if min(falls) > 0 else
                  f"changed by {-max(falls):+.3f} to {-min(falls):+.3f} bits"))
    if n_runs and len(capped) == n_runs and len(falls) == n_runs and min(falls) > 0:
        text += (". **None converged**: the tables compare methods at a fixed training budget, not at their "
                 "plateau, and a ranking there can change with longer training")
    return text + "."


def word_kd_margins(summary):
    """[(size, TIE-KD's summary)] at the sizes where TIE-KD has a paired margin over word-KD."""
    return [(z, summary[(z, "tie_kd")]) for z in sizes_in_order(summary)
            if (z, "tie_kd") in summary and summary[(z, "tie_kd")]["gain_over_word_kd"] is not None]


def paper_claims(summary, boots, teacher=None):
    """The paper's claims, each with a verdict per student size from the per-seed paired
    bootstraps; then the methods the paper did not compare, and the cost."""
    out = []
    sizes = sizes_in_order(summary)
    boot_word, boot_ce = boots["word_kd"], boots["ce"]
    for size in sizes:
        tie, word, ce = (summary.get((size, m)) for m in ("tie_kd", "word_kd", "ce"))
        if tie and ce and tie["gain_over_ce"] is not None:
            won, n = wins(boot_ce, size, "BLEU")
            rel = tie["gain_over_ce"] / ce["bleu"] * 100 if ce["bleu"] else None
            out.append(f"- **{size}, TIE-KD beats the student without KD** (paper: +0.60 to +1.11 BLEU with "
                       f"Transformer-base students): {verdict(won, losses(boot_ce, size, 'BLEU'), n)}: "
                       f"{gain(tie, 'gain_over_ce')} BLEU paired"
                       + (f" ({rel:+.0f}% of CE's {ce['bleu']:.2f})" if rel is not None else "")
                       + f", {gain(tie, 'chrf_gain_over_ce')} chrF; significantly better by BLEU in {won} of {n} seeds.")
        if tie and word and tie["gain_over_word_kd"] is not None:
            won_b, n = wins(boot_word, size, "BLEU")
            won_c, _ = wins(boot_word, size, "chrF2")
            out.append(f"- **{size}, TIE-KD beats word-KD**: by BLEU {verdict(won_b, losses(boot_word, size, 'BLEU'), n)} "
                       f"({gain(tie, 'gain_over_word_kd')}, significant in {won_b} of {n} seeds); by chrF "
                       f"{verdict(won_c, losses(boot_word, size, 'chrF2'), n)} ({gain(tie, 'chrf_gain_over_word_kd')}, "
                       f"{won_c} of {n}).")
            if tie["length_ratio"] is not None and word["length_ratio"] is not None:
                out.append(f"- **{size}**, length: TIE-KD's translations are {tie['length_ratio']:.3f} of the reference "
                           f"length (brevity penalty {fmt(tie['brevity_penalty'], digits=3)}), word-KD's "
                           f"{word['length_ratio']:.3f} ({fmt(word['brevity_penalty'], digits=3)}); lenpen was not "
                           f"tuned per method.")
        for method in ("seq_kd", "tie_kd_pool"):  # not in the paper's comparison
            other = summary.get((size, method))
            rows = [r for r in boots.get(method, []) if r["size"] == size]
            if tie and other and rows and other.get("gain_over_tie_kd") is not None:
                won, n = wins(rows, size, "BLEU")
                out.append(f"- **{size}, {METHOD_NAMES[method]} vs TIE-KD** (not in the paper's comparison): "
                           f"{gain(other, 'gain_over_tie_kd')} BLEU, {gain(other, 'chrf_gain_over_tie_kd')} chrF "
                           f"(paired); significantly better by BLEU in {won} of {n} seeds, worse in "
                           f"{losses(rows, size, 'BLEU')}.")
    by_size = word_kd_margins(summary)
    if len(by_size) > 1:
        per_size = [(z, s, *wins(boot_word, z, "BLEU"), losses(boot_word, z, "BLEU")) for z, s in by_size]
        overall = ("holds" if all(n and won == n for _, _, won, n, _ in per_size) else
                   "does not hold" if any(lost for *_, lost in per_size) else "not shown at every size")
        spread = "; ".join(f"{METHOD_NAMES[m]}'s gain over CE: " + ", ".join(
            f"{z} {gain(summary[(z, m)], 'gain_over_ce')}" for z in sizes
            if (z, m) in summary and summary[(z, m)]["gain_over_ce"] is not None) for m in ("word_kd", "tie_kd"))
        out.append("- **Capacity gap** (paper: TIE-KD's gain holds better than other KD methods' as the gap "
                   "changes), tested here as *TIE-KD beats word-KD by BLEU at every student size*: "
                   f"{overall}: by size, largest gap first, "
                   + ", ".join(f"{z} {gain(s, 'gain_over_word_kd')} ({verdict(won, lost, n)})"
                               for z, s, won, n, lost in per_size)
                   + f". {spread}.")
    for size in sizes:
        ce, word, tie = (summary.get((size, m)) for m in ("ce", "word_kd", "tie_kd"))
        if ce and ce["cpu_seconds"] and word and word["cpu_seconds"] and tie and tie["cpu_seconds"]:
            out.append(f"- **{size}, cost** (paper's peers: word-KD 2.5-4x plain training's GPU-hours): word-KD took "
                       f"{word['cpu_seconds'] / ce['cpu_seconds']:.1f}x CE's training CPU time, TIE-KD "
                       f"{tie['cpu_seconds'] / ce['cpu_seconds']:.1f}x CE's and "
                       f"{tie['cpu_seconds'] / word['cpu_seconds']:.1f}x word-KD's (the teacher's training not counted).")
    if teacher:
        out.append(f"- The teacher scores {teacher['bleu']:.2f} BLEU; the best student "
                   f"{max(s['bleu'] for s in summary.values()):.2f}.")
    return out


def shared_means(s, t, field):
    """Means of a field of two methods over the seeds both have a value for."""
    seeds = [x for x in s["by_seed"] if x in t["by_seed"] and s["by_seed"][x].get(field) is not None
             and t["by_seed"][x].get(field) is not None]
    if not seeds:
        return None, None
    return (statistics.fmean(s["by_seed"][x][field] for x in seeds),
            statistics.fmean(t["by_seed"][x][field] for x in seeds))


def equal_compute_findings(summary, main_size, boot_eqtime):
    out = []
    tie = summary.get((main_size, "tie_kd"))
    for method in ("ce_eqtime", "word_kd_eqtime"):
        base = summary.get((main_size, method))
        if not (tie and base and base.get("gain_over_tie_kd") is not None):
            continue
        delta, sd, n = -base["gain_over_tie_kd"], base["gain_over_tie_kd_sd"], base["gain_over_tie_kd_n"]
        where = "level with" if abs(delta) < 0.005 else ("ahead of" if delta > 0 else "behind")
        won, compared = wins(boot_eqtime.get(method, []), main_size, "BLEU")
        lost = losses(boot_eqtime.get(method, []), main_size, "BLEU")
        cpu_b, cpu_t = shared_means(base, tie, "cpu_seconds")
        upd_b, upd_t = shared_means(base, tie, "num_updates")
        loss_b, loss_t = shared_means(base, tie, "best_valid_loss")
        name = "CE" if method == "ce_eqtime" else "word-KD"
        out.append(f"- **Equal compute ({main_size})**: a {name} student given the TIE-KD student's CPU time "
                   f"({fmt(hours(cpu_b))} vs {fmt(hours(cpu_t))} CPU-h, {fmt(upd_b, digits=0)} updates instead of "
                   f"{fmt(upd_t, digits=0)}; means over the {n} seed(s) both have) scores {fmt(base['bleu'], base['bleu_sd'])} "
                   f"BLEU: TIE-KD is {where} it ({signed(delta, sd)} BLEU, "
                   f"{signed(-base['chrf_gain_over_tie_kd'], base['chrf_gain_over_tie_kd_sd'])} chrF, paired; "
                   f"significantly better by BLEU in {won} of {compared} seeds, worse in {lost}; best validation CE "
                   f"{fmt(loss_b, digits=3)} vs TIE-KD's {fmt(loss_t, digits=3)}). The teacher's training is not "
                   f"counted: it is done once for every student.")
    return out


def findings(summary, boots, main_size=None, teacher=None):
    """Plain statements of what the numbers say, against the paper's claims."""
    out = ["- Convergence: " + convergence_line(summary)]
    out += paper_claims(summary, boots, teacher)
    if main_size:
        out += equal_compute_findings(summary, main_size, boots)
    return "\n".join(out)


# ---------------------------------------------------------------- report parts

def span_minutes(invocations):
    """Minutes from the first invocation's start to the last end of one that ran to its end; 0 if none did.
    A stopped invocation ("minutes": None) still opens the span: grids run across sessions."""
    def start(i):
        return time.mktime(time.strptime(i["start"], "%Y-%m-%d %H:%M:%S"))
    ends = [start(i) + i["minutes"] * 60 for i in invocations if i.get("minutes") is not None]
    return (max(ends) - min(map(start, invocations))) / 60 if ends else 0.0


def how_it_was_run(work, records, teacher=None):
    grid = load_grid(work)
    cpu = sum(r["cpu_seconds"] for r in records if r.get("cpu_seconds")) / 3600
    no_cpu = sum(not r.get("cpu_seconds") for r in records)
    teacher_cpu = (teacher or {}).get("cpu_seconds") or 0
    lines = []
    if grid:
        invocations = grid.get("invocations", [])
        wall = span_minutes(invocations)
        lines += [f"- Command: `{grid.get('command')}`: "
                  + (f"{wall / 60:.1f} h from the first invocation's start to the last one's end, " if wall else "")
                  + f"{len(invocations)} invocation(s) (re-running it skips what is done); "
                  f"the students' training took {cpu:.1f} CPU-hours in all"
                  + (f" ({no_cpu} run(s) without a CPU-time record not counted)" if no_cpu else "")
                  + (f", the teacher's {teacher_cpu / 3600:.1f}." if teacher_cpu else ".")]
        lines += invocation_differences(invocations)
        lines += [f"- Machine: {grid.get('machine')}; torch {grid.get('torch')}, fairseq {grid.get('fairseq')}, "
                  f"sacreBLEU {records[0].get('sacrebleu_version') if records else '?'}; commit {grid.get('commit')} "
                  f"(the last invocation's); up to {grid.get('jobs')} runs of this grid trained at once, "
                  f"{grid.get('threads')} torch thread(s) each.",
                  f"- Data: {grid.get('data_note', '')}"]
    if records:
        lines.append(evaluation_line(records))
    return "\n".join(lines)


def invocation_differences(invocations):
    """Lines for earlier invocations whose options or commit differ from the last one's."""
    if len(invocations) < 2:
        return []
    last = invocations[-1]
    last_argv = last.get("argv") or []

    def options(argv):
        out, key = {}, None
        for a in argv:
            if a.startswith("--"):
                key = a
                out[key] = True
            elif key:
                out[key] = a
                key = None
        return out

    last_opts = options(last_argv)
    lines = []
    for i, inv in enumerate(invocations[:-1], 1):
        opts = options(inv.get("argv") or [])
        diff = [f"{k} {opts.get(k, '(unset)')}" for k in sorted(set(opts) | set(last_opts))
                if opts.get(k) != last_opts.get(k)]
        if inv.get("commit") and last.get("commit") and inv["commit"] != last["commit"]:
            diff.append(f"commit {inv['commit']}")
        if diff:
            lines.append(f"- Invocation {i} ({inv.get('start', '?')}) differed from the last: " + ", ".join(f"`{d}`" for d in diff)
                         + ". Runs it finished were kept.")
    if not any(inv.get("commit") for inv in invocations[:-1]):
        lines.append("- The invocations' own commits were not recorded (the runner records them since 2026-11-30); "
                     "the commit below is the last invocation's.")
    return lines


def evaluation_line(records):
    settings = defaultdict(int)
    for r in records:
        settings[(*evaluation_settings(r), r.get("n"), r.get("bleu_signature"), r.get("chrf_signature"))] += 1
    (average, beam, lenpen, n, bleu_sig, chrf_sig), _ = max(settings.items(), key=lambda kv: kv[1])
    line = (f"- Evaluation: average of the last {average} checkpoints (`tiekd-eval --average-last {average}`), "
            f"beam {beam}, lenpen {lenpen} (not tuned per method), SentencePiece undone, sacreBLEU on the "
            f"{n or 0:,}-sentence test set; BLEU `{bleu_sig}`, chrF `{chrf_sig}`.")
    if len(settings) > 1:
        line += f" **{len(records) - max(settings.values())} run(s) were evaluated with other settings.**"
    return line


def teacher_line(teacher):
    if not teacher:
        return ""
    stopped = {"patience": "stopped by patience", "max_update": "stopped at its update cap"}.get(teacher.get("stopped"), "")
    cpu = f", {hours(teacher['cpu_seconds']):.2f} CPU-h" if teacher.get("cpu_seconds") else ""
    fall = (f"; over its last 1,000 updates its validation CE {fall_text(teacher['valid_fall_1k'])}"
            if teacher.get("valid_fall_1k") is not None else "")
    params = f", {teacher['params'] / 1e6:.2f}M params" if teacher.get("params") else ""
    updates = f", {teacher['num_updates']:,} updates" if teacher.get("num_updates") else ""
    average = len(teacher.get("checkpoints") or [])
    return (f"Teacher (`{teacher.get('arch', '?')}`{params}{updates}, {stopped}{cpu}{fall}"
            + (f"; distilled from the average of its last {average} checkpoints" if average > 1 else "")
            + f"): **BLEU {teacher['bleu']:.2f}, chrF {teacher['chrf']:.2f}**.")


def missing_runs(work, records):
    """Names of the runs the grid plans that have no test evaluation yet."""
    done = {f"{r['size']}-{r['method']}-s{r['seed']}" for r in records}
    return [name for name, *_ in planned_runs(load_grid(work)) if name not in done]


def commands(work, records):
    example = {}
    for r in records:
        example.setdefault(r["method"], r.get("command"))
    parts = []
    for method in METHOD_NAMES:
        if example.get(method):
            command = example[method].replace(os.path.abspath(work) + "/", "WORK/")
            command = re.sub(r"--user-dir \S*tiekd_fairseq", "--user-dir tiekd_fairseq", command)
            parts += [f"- {METHOD_NAMES[method]}:", "", f"  ```\n  {command}\n  ```", ""]
    return parts


def pair_name(work):
    grid = load_grid(work)
    return f"{grid['src']}-{grid['tgt']}" if "src" in grid else os.path.basename(os.path.abspath(work))


def main_size_of(summary):
    return equal_compute_size(summary) or max(sizes_in_order(summary), key=lambda z: sum(zz == z for zz, _ in summary))


def headline(works, data):
    """A few lines for the README: completeness, convergence, the main size's methods,
    the verdicts, equal compute, the capacity gap and the other pairs, all from the records."""
    main = works[0]
    d = data[main]
    summary, teacher = d["summary"], d["teacher"]
    boot_word, boot_ce = d["boots"]["word_kd"], d["boots"]["ce"]
    lines = []
    pending = {pair_name(w): len(data[w]["missing"]) for w in works if data[w]["missing"]}
    if pending:
        lines.append("- **Incomplete**: the grid has not finished; runs missing: "
                     + ", ".join(f"{p} {n}" for p, n in pending.items())
                     + f" (listed at the end); records read {time.strftime('%Y-%m-%d %H:%M')}.")
    lines.append(f"- {convergence_line(summary)}")
    size = main_size_of(summary)
    methods = [m for m in METHOD_NAMES if not m.endswith(EQTIME) and (size, m) in summary]
    counts = sorted({len(summary[(size, m)]["seeds"]) for m in methods})
    seeds = f"{counts[0]} seed(s)" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds per method"
    lines.append(f"- {pair_name(main)}, {size} students ({summary[(size, methods[0])]['params'] / 1e6:.2f}M params, "
                 f"{seeds}), test BLEU / chrF: " + "; ".join(
                     f"{METHOD_NAMES[m]} {fmt(summary[(size, m)]['bleu'], summary[(size, m)]['bleu_sd'])} / "
                     f"{fmt(summary[(size, m)]['chrf'])}" for m in methods)
                 + (f" (teacher {teacher['bleu']:.2f} / {teacher['chrf']:.2f})." if teacher else "."))
    tie = summary.get((size, "tie_kd"))
    if tie and any(r["size"] == size for r in boot_word):
        won_b, n = wins(boot_word, size, "BLEU")
        won_c, _ = wins(boot_word, size, "chrF2")
        lines.append(f"- TIE-KD vs word-KD: {gain(tie, 'gain_over_word_kd')} BLEU, {gain(tie, 'chrf_gain_over_word_kd')} "
                     f"chrF (paired over seeds); significantly better (paired bootstrap, p < 0.05) in {won_b} of {n} "
                     f"seeds by BLEU and {won_c} of {n} by chrF.")
    if tie and any(r["size"] == size for r in boot_ce):
        won, n = wins(boot_ce, size, "BLEU")
        lines.append(f"- TIE-KD vs CE: {gain(tie, 'gain_over_ce')} BLEU (paper: +0.60 to +1.11), significantly "
                     f"better in {won} of {n} seeds.")
    word = summary.get((size, "word_kd"))
    if tie and word and tie["length_ratio"] is not None and word["length_ratio"] is not None:
        lines.append(f"- Length: TIE-KD's translations are {tie['length_ratio']:.3f} of the reference length, "
                     f"word-KD's {word['length_ratio']:.3f} (same lenpen for all).")
    lines += [line.replace(f"**Equal compute ({size})**", "Equal compute") for line in equal_compute_findings(summary, size, d["boots"])]
    margins = word_kd_margins(summary)
    if len(margins) > 1:
        lines.append("- TIE-KD minus word-KD BLEU by student size (largest teacher-student gap first): "
                     + ", ".join(f"{z} {gain(s, 'gain_over_word_kd')}" for z, s in margins) + ".")
    for other in works[1:]:
        o_summary = data[other]["summary"]
        if not o_summary:
            lines.append(f"- {pair_name(other)}: no run evaluated yet.")
        for z in sizes_in_order(o_summary):
            ms = [m for m in METHOD_NAMES if (z, m) in o_summary]
            lines.append(f"- {pair_name(other)}, {z}: " + "; ".join(
                f"{METHOD_NAMES[m]} {fmt(o_summary[(z, m)]['bleu'], o_summary[(z, m)]['bleu_sd'])}" for m in ms)
                + " BLEU.")
    return "\n".join(lines)


def equal_compute_size(summary):
    """The student size that has the equal-compute baselines (the main size), or None."""
    return next((z for z in sizes_in_order(summary) if (z, "ce_eqtime") in summary
                 or (z, "word_kd_eqtime") in summary), None)


def pair_section(work, d):
    """The results of one language pair: how it ran, the teacher, the table and the bootstraps."""
    name = pair_name(work)
    if not d["records"]:
        return [f"## {name}: pending", "", "No run evaluated yet"
                + (f" ({len(d['missing'])} planned)." if d["missing"] else "."), ""]
    title = "at the update cap" if all_at_cap(d["summary"]) else "mean ± sd over seeds"
    parts = [f"## {name}: how it was run", "", how_it_was_run(work, d["records"], d["teacher"]), "",
             teacher_line(d["teacher"]), "",
             f"## {name}: BLEU and chrF {title}", "", results_table(d["summary"]), "", TABLE_NOTES, ""]
    parts += bootstrap_section("TIE-KD vs word-KD", d["boots"]["word_kd"])
    parts += bootstrap_section("TIE-KD vs CE", d["boots"]["ce"])
    for method in ("seq_kd", "tie_kd_pool"):
        parts += bootstrap_section(f"{METHOD_NAMES[method]} vs TIE-KD", d["boots"][method])
    return parts


def render(works, data, plots):
    main = works[0]
    d = data[main]
    summary = d["summary"]
    main_size = equal_compute_size(summary)
    name = pair_name(main)
    parts = ["# Results: TIE-KD vs CE, word-KD and seq-KD students, measured", "",
             "Generated by `python examples/results_table.py` from the JSON records of "
             "`python examples/run_grid.py` (tiekd-eval's `eval-*.json` and the runner's `train.json` "
             "per run). Do not edit by hand.", "",
             "## Headline", "", headline(works, data), ""]
    parts += pair_section(main, d)
    if main_size:
        parts += [f"## Equal compute ({main_size}): does TIE-KD pay for itself?", "",
                  "CE and word-KD students given the CPU time that the TIE-KD student of the same seed used "
                  "(`*_eqtime` runs: as many updates as that time buys at their own CPU-seconds per update, "
                  "rounded to whole checkpoint intervals; no early stop). CPU vs TIE-KD is the per-seed ratio of "
                  "training CPU time, which the rounding and each process's start-up keep from being exactly 1.", "",
                  equal_compute_table(summary, main_size), ""]
        for base in ("ce_eqtime", "word_kd_eqtime"):
            parts += bootstrap_section(f"TIE-KD vs {METHOD_NAMES[base]}",
                                       [r for r in d["boots"][base] if r["size"] == main_size])
    if plots.get("compute"):
        parts += ["## Quality against compute", "", f"![BLEU vs training CPU-hours]({plots['compute']})", ""]
    if plots.get("curves"):
        parts += [f"Validation CE of the {main_size} students as they train (one point per validation):", "",
                  f"![validation CE vs training CPU-hours]({plots['curves']})", ""]
    if plots.get("gap"):
        parts += ["## Capacity gap", "", "Each KD method's paired BLEU gain over the CE student of its size (mean ± sd "
                  "over seeds) against the teacher/student ratio of all parameters, shared embeddings included.", "",
                  f"![BLEU gain over CE vs capacity gap]({plots['gap']})", ""]
    for other in works[1:]:
        parts += pair_section(other, data[other])
    parts += ["## Against the paper", "", f"The paper reports {PAPER}.", "",
              f"### {name}", "", findings(summary, d["boots"], main_size, d["teacher"]), ""]
    for other in works[1:]:
        o = data[other]
        if o["summary"]:
            parts += [f"### {pair_name(other)}", "", findings(o["summary"], o["boots"], None,
                                                               o["teacher"]), ""]
    params = [s["params"] for w in works for s in data[w]["summary"].values()]
    seeds = sorted({len(s["seeds"]) for w in works for s in data[w]["summary"].values()})
    parts += ["## Read with care", "",
              f"- Scale: students of {min(params) / 1e6:.2f}-{max(params) / 1e6:.2f}M parameters trained on two CPU "
              f"cores; the paper's Transformer-base student has about "
              f"{PAPER_STUDENT_PARAMS / max(params):.0f}-{PAPER_STUDENT_PARAMS / min(params):.0f}x more and trains on "
              "millions of pairs.",
              f"- sd is the sample standard deviation over seeds ({', '.join(map(str, seeds))} seed(s) per row here); "
              "with so few seeds it is itself uncertain.",
              "- seq-KD's CPU time includes the teacher translating the training set in its first run only "
              "(the others reuse the shared cache, `--pseudo-cache-dir`); TIE-KD + pool's includes "
              "translating a pool shard each epoch.", ""]
    parts += [f"## Commands per method ({name}; WORK is the runner's `--work`)", ""] + commands(main, d["records"])
    missing = [(pair_name(w), data[w]["missing"]) for w in works if data[w]["missing"]]
    if missing:
        parts += ["## Runs not evaluated yet", ""] + [f"- {p}: {', '.join(names)}" for p, names in missing] + [""]
    return "\n".join(parts)


def load_pair(work, n_samples):
    records, teacher = load_records(work)
    missing = missing_runs(work, records)
    boots = {base: paired_bootstrap(records, baseline=base, n_samples=n_samples)  # TIE-KD vs each baseline
             for base in ("word_kd", "ce", "ce_eqtime", "word_kd_eqtime")}
    boots.update({m: paired_bootstrap(records, system=m, baseline="tie_kd", n_samples=n_samples)
                  for m in ("seq_kd", "tie_kd_pool")})  # the methods the paper did not compare, vs TIE-KD
    return {"records": records, "summary": summarize(records), "boots": boots,
            "teacher": teacher, "missing": missing}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", action="append", help="a grid's --work (repeat; the first is the main pair)")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--bootstrap-samples", type=int, default=1000)
    args = ap.parse_args(argv)
    works = args.work or ["work/grid"]
    data = {work: load_pair(work, args.bootstrap_samples) for work in works}
    if not data[works[0]]["records"]:
        raise SystemExit(f"{works[0]}: no evaluated run (runs/*/eval-*.json) yet; run examples/run_grid.py first")
    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    plots = {}
    records, summary, teacher = (data[works[0]][k] for k in ("records", "summary", "teacher"))
    main_size = equal_compute_size(summary)
    if teacher and len(sizes_in_order(summary)) > 1:
        plots["gap"] = stem + "_capacity_gap.png"
        capacity_gap_plot(summary, teacher["params"], os.path.join(out_dir, plots["gap"]))
    if any(s["cpu_seconds"] for s in summary.values()):
        plots["compute"] = stem + "_compute.png"
        compute_plot(summary, os.path.join(out_dir, plots["compute"]), main_size)
    if main_size and any(r["valid_curve"] for r in records):
        plots["curves"] = stem + "_valid_curves.png"
        learning_curve_plot(records, main_size, os.path.join(out_dir, plots["curves"]))
    text = render(works, data, plots)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    for work in works:
        with open(os.path.join(work, "summary.json"), "w") as f:
            json.dump({f"{size}/{method}": {k: v for k, v in s.items() if k != "by_seed"}
                       for (size, method), s in data[work]["summary"].items()}, f, indent=1)
    print(f"wrote {args.out}" + "".join(f" and {p}" for p in plots.values()))


if __name__ == "__main__":
    main()
