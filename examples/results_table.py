#!/usr/bin/env python3
"""Write docs/results.md (and its plots) from the JSON records of grids run by
examples/run_grid.py: tiekd-eval's ``eval-*.json`` and the runner's ``train.json`` per run.

usage: python examples/results_table.py --work WORK/en-de [--work WORK/en-fr ...] [--out docs/results.md]
The first --work is the main language pair (sizes, equal-compute baselines, capacity gap); the
others are reported as further pairs. Nothing in the tables is typed by hand: rerun this after
the grid to regenerate them.
"""
import argparse
import glob
import json
import os
import re
import statistics
from collections import defaultdict

from run_grid import validations  # the runner's reading of a run's train.log

METHOD_NAMES = {  # display order
    "ce": "CE (no KD)",
    "word_kd": "word-KD",
    "seq_kd": "seq-KD",
    "tie_kd": "TIE-KD",
    "tie_kd_pool": "TIE-KD + pool",
    "ce_eqtime": "CE, TIE-KD's CPU time",
    "word_kd_eqtime": "word-KD, TIE-KD's CPU time",
}
EQTIME = "_eqtime"
COLOURS = {"ce": "C0", "word_kd": "C1", "seq_kd": "C2", "tie_kd": "C3", "tie_kd_pool": "C4"}  # one per method in every plot


def colour(method):
    return COLOURS.get(method[:-len(EQTIME)] if method.endswith(EQTIME) else method)
PAPER = ("TIE-KD gains +1.04 (WMT'14 en-de), +0.60 (en-fr) and +1.11 (WMT'16 en-ro) BLEU over the "
         "student trained without KD, beats vanilla word-level KD on all three, and its gain holds "
         "better than other KD methods' as the teacher-student capacity gap changes. Setting: "
         "Transformer-big teacher, Transformer-base student, millions of sentence pairs, 200k "
         "updates on GPUs")


def load_records(work):
    """One dict per evaluated student run: tiekd-eval's record plus the runner's train.json."""
    records = []
    for path in sorted(glob.glob(os.path.join(work, "runs", "*", "eval-*.json"))):
        records.append(_with_train_record(path))
    return records


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
    """BLEU's length terms of a run's translations: hypothesis/reference length, the brevity
    penalty, and BLEU without it (the geometric mean of the 1-4-gram precisions, x100), which
    tells a shorter-but-more-precise system from a worse one."""
    from sacrebleu.metrics import BLEU

    score = BLEU().corpus_score(read_lines(hyp), [read_lines(ref)])
    return {"length_ratio": score.sys_len / score.ref_len if score.ref_len else None,
            "brevity_penalty": score.bp,
            "bleu_without_bp": score.score / score.bp if score.bp else None}


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


def load_teacher(work):
    found = glob.glob(os.path.join(work, "teacher", "eval-*.json"))
    return _with_train_record(found[0]) if found else None


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(records):
    """{(size, method): summary} with means and sample sds over seeds."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["size"], r["method"])].append(r)
    summary = {}
    for key, runs in groups.items():
        s = {"seeds": sorted(r["seed"] for r in runs), "params": runs[0]["params"],
             "stopped_by_patience": sum(r.get("stopped") == "patience" for r in runs)}
        for field in ("bleu", "chrf", "teacher_top1_agree", "train_seconds", "cpu_seconds", "updates_per_second",
                      "peak_rss_mib", "num_updates", "best_valid_loss", "valid_fall_1k", "length_ratio",
                      "bleu_without_bp"):
            s[field], s[field + "_sd"] = mean_sd([r.get(field) for r in runs])
        summary[key] = s
    for (size, method), s in summary.items():  # gains of the mean BLEU (and chrF) over the baselines
        for base in ("ce", "word_kd"):
            b = summary.get((size, base))
            s[f"gain_over_{base}"] = None if b is None or method == base else s["bleu"] - b["bleu"]
            s[f"chrf_gain_over_{base}"] = None if b is None or method == base else s["chrf"] - b["chrf"]
    return summary


def paired_bootstrap(records, system="tie_kd", baseline="word_kd", n_samples=1000):
    """sacreBLEU's paired bootstrap (``--paired-bs``) of system vs baseline, per size and seed."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    by_key = {(r["size"], r["method"], r["seed"]): r for r in records}
    rows = []
    for (size, method, seed), r in sorted(by_key.items()):
        base = by_key.get((size, baseline, seed))
        if method != system or base is None:
            continue
        refs = read_lines(r["ref"])
        test = PairedTest([(f"Baseline: {baseline}", read_lines(base["hyp"])), (system, read_lines(r["hyp"]))],
                          {"BLEU": BLEU(references=[refs]), "chrF": CHRF(references=[refs])},
                          references=None, test_type="bs", n_samples=n_samples)
        signatures, scores = test()
        rows.append({"size": size, "seed": seed, "baseline": baseline, **{
            name: {"baseline": scores[name][0].score, "system": scores[name][1].score,
                   "p_value": scores[name][1].p_value, "signature": str(sig)}
            for name, sig in signatures.items()}})
    return rows


def read_lines(path):
    """As ``tiekd_fairseq.evaluate.read_lines`` reads the same files when it scores them ("\n"
    ends a line, a CRLF ending loses its "\r"); not imported from there, because importing the
    plugin imports fairseq, whose logging setup floods this script's output."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def fmt(mean, sd=None, digits=2):
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def signed(x):
    return "—" if x is None else f"{x:+.2f}"


def hours(seconds):
    return None if seconds is None else seconds / 3600


def sizes_in_order(summary):
    return sorted({size for size, _ in summary},
                  key=lambda size: min(s["params"] for (z, _), s in summary.items() if z == size))


def results_table(summary, methods=None):
    lines = ["| student | params | method | seeds | BLEU | chrF | Δ BLEU vs CE | Δ BLEU vs word-KD "
             "| hyp/ref length | updates | stopped by patience | best valid CE (bits) | valid CE fall, last 1k updates "
             "| teacher top-1 agree | CPU-h | wall h | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sizes_in_order(summary):
        for method in methods or METHOD_NAMES:
            s = summary.get((size, method))
            if s is None:
                continue
            lines.append(
                f"| {size} | {s['params'] / 1e6:.2f}M | {METHOD_NAMES[method]} | {len(s['seeds'])} "
                f"| {fmt(s['bleu'], s['bleu_sd'])} | {fmt(s['chrf'], s['chrf_sd'])} "
                f"| {signed(s['gain_over_ce'])} | {signed(s['gain_over_word_kd'])} "
                f"| {fmt(s['length_ratio'], digits=3)} | {fmt(s['num_updates'], digits=0)} | {s['stopped_by_patience']} of {len(s['seeds'])} "
                f"| {fmt(s['best_valid_loss'], digits=3)} | {fmt(s['valid_fall_1k'], digits=3)} "
                f"| {fmt(s['teacher_top1_agree'], digits=3)} "
                f"| {fmt(hours(s['cpu_seconds']))} | {fmt(hours(s['train_seconds']))} "
                f"| {fmt(s['peak_rss_mib'], digits=0)} |")
    return "\n".join(lines)


def bootstrap_table(rows):
    base = METHOD_NAMES[rows[0]["baseline"]] if rows else "baseline"
    lines = [f"| student | seed | {base} BLEU | TIE-KD BLEU | p (BLEU) | {base} chrF | TIE-KD chrF | p (chrF) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, c = r["BLEU"], r["chrF2"]
        lines.append(f"| {r['size']} | {r['seed']} | {b['baseline']:.2f} | {b['system']:.2f} | {b['p_value']:.4f} "
                     f"| {c['baseline']:.2f} | {c['system']:.2f} | {c['p_value']:.4f} |")
    return "\n".join(lines)


def wins(rows, size, metric):
    """Seeds where TIE-KD is significantly better (p < 0.05), out of the seeds compared."""
    sig = [r for r in rows if r["size"] == size]
    return sum(r[metric]["p_value"] < 0.05 and r[metric]["system"] > r[metric]["baseline"] for r in sig), len(sig)


def capacity_gap_plot(summary, teacher_params, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sizes_in_order(summary)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHOD_NAMES:
        if method == "ce" or method.endswith(EQTIME):
            continue
        points = [(teacher_params / summary[(z, method)]["params"], summary[(z, method)]["gain_over_ce"])
                  for z in sizes if (z, method) in summary and summary[(z, method)]["gain_over_ce"] is not None]
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", color=colour(method), label=METHOD_NAMES[method])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("capacity gap: teacher params / student params")
    ax.set_ylabel("BLEU gain over the CE student")
    ax.set_title("Gain of each KD method vs the teacher-student gap")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compute_plot(summary, path):
    """BLEU against training CPU-hours: a line per method through its runs' means (every size,
    and for CE and word-KD the runs given TIE-KD's CPU time), labelled by size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHOD_NAMES:
        if method.endswith(EQTIME):
            continue
        points = sorted((hours(s["cpu_seconds"]), s["bleu"], f"{z}{' (TIE-KD time)' if m.endswith(EQTIME) else ''}")
                        for (z, m), s in summary.items()
                        if m in (method, method + EQTIME) and s["cpu_seconds"] is not None)
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour(method),
                label=METHOD_NAMES[method])
        for x, y, label in points:
            if label.endswith("(TIE-KD time)"):  # the equal-compute point: a square on its method's line
                ax.plot([x], [y], marker="s", markersize=8, color=colour(method))
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                        color=colour(method))
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


def equal_compute_table(summary, size):
    rows = ["| method | updates | CPU-h | BLEU | chrF | Δ BLEU vs TIE-KD |", "|---|---|---|---|---|---|"]
    tie = summary.get((size, "tie_kd"))
    for method in ("ce", "ce_eqtime", "word_kd", "word_kd_eqtime", "tie_kd"):
        s = summary.get((size, method))
        if s is None:
            continue
        delta = None if tie is None or method == "tie_kd" else s["bleu"] - tie["bleu"]
        rows.append(f"| {METHOD_NAMES[method]} | {fmt(s['num_updates'], digits=0)} | {fmt(hours(s['cpu_seconds']))} "
                    f"| {fmt(s['bleu'], s['bleu_sd'])} | {fmt(s['chrf'], s['chrf_sd'])} | {signed(delta)} |")
    return "\n".join(rows)


def findings(summary, boot_word, boot_ce, main_size=None, teacher=None):
    """Plain statements of what the numbers say, against the paper's claims."""
    out = []
    sizes = sizes_in_order(summary)
    for size in sizes:
        tie, word, ce = (summary.get((size, m)) for m in ("tie_kd", "word_kd", "ce"))
        if tie and ce:
            verdict = "within" if 0.6 <= tie["gain_over_ce"] <= 1.1 else (
                "above" if tie["gain_over_ce"] > 1.1 else "below")
            won, n = wins(boot_ce, size, "BLEU")
            out.append(f"- **{size}**: TIE-KD vs CE {signed(tie['gain_over_ce'])} BLEU "
                       f"({verdict} the paper's +0.6 to +1.1), {signed(tie['chrf_gain_over_ce'])} chrF"
                       + (f"; significantly better by BLEU in {won} of {n} seeds." if n else "."))
        if tie and word:
            won_b, n = wins(boot_word, size, "BLEU")
            won_c, _ = wins(boot_word, size, "chrF2")
            out.append(f"- **{size}**: TIE-KD vs word-KD {signed(tie['gain_over_word_kd'])} BLEU, "
                       f"{signed(tie['chrf_gain_over_word_kd'])} chrF; TIE-KD is significantly better "
                       f"(paired bootstrap, p < 0.05) in {won_b} of {n} seeds by BLEU and "
                       f"{won_c} of {n} by chrF.")
            if tie["length_ratio"] is not None and word["length_ratio"] is not None:
                out.append(f"- **{size}**: length: TIE-KD's translations are {tie['length_ratio']:.3f} of the "
                           f"reference length, word-KD's {word['length_ratio']:.3f}; BLEU without its brevity "
                           f"penalty (the 1-4-gram precisions' geometric mean) is {fmt(tie['bleu_without_bp'])} "
                           f"for TIE-KD and {fmt(word['bleu_without_bp'])} for word-KD "
                           f"({signed(tie['bleu_without_bp'] - word['bleu_without_bp'])}).")
        best = max((s["bleu"], m) for (z, m), s in summary.items() if z == size and not m.endswith(EQTIME))
        out.append(f"- **{size}**: best method by mean BLEU: {METHOD_NAMES[best[1]]} ({best[0]:.2f}).")
    if len(sizes) > 1:
        for method in METHOD_NAMES:
            if method.endswith(EQTIME):
                continue
            gains = [(z, summary[(z, method)]["gain_over_ce"]) for z in sizes
                     if (z, method) in summary and summary[(z, method)]["gain_over_ce"] is not None]
            if len(gains) > 1:
                out.append(f"- Gain over CE by student size (smallest first, i.e. largest gap first), "
                           f"{METHOD_NAMES[method]}: " + ", ".join(f"{z} {signed(g)}" for z, g in gains) + ".")
        tie = [summary[(z, "tie_kd")]["gain_over_word_kd"] for z in sizes
               if (z, "tie_kd") in summary and summary[(z, "tie_kd")]["gain_over_word_kd"] is not None]
        if len(tie) == len(sizes):
            out.append(f"- Capacity gap: TIE-KD's margin over word-KD at the sizes above is "
                       + ", ".join(f"{g:+.2f}" for g in tie) + " BLEU; it "
                       + ("stays positive at every gap." if min(tie) > 0 else "is not positive at every gap."))
    trained = [s for (_, m), s in summary.items() if not m.endswith(EQTIME)]
    n_runs, by_patience = sum(len(s["seeds"]) for s in trained), sum(s["stopped_by_patience"] for s in trained)
    falls = [s["valid_fall_1k"] for s in trained if s["valid_fall_1k"] is not None]
    out.append(f"- Convergence: {by_patience} of {n_runs} runs stopped because validation CE stopped improving"
               + (f"; over the last 1,000 updates validation CE still fell by {min(falls):.3f} to "
                  f"{max(falls):.3f} bits (means per size and method)." if falls else "."))
    if main_size:
        tie, ce_eq, word_eq = (summary.get((main_size, m)) for m in ("tie_kd", "ce_eqtime", "word_kd_eqtime"))
        for base in (ce_eq, word_eq):
            if tie and base:
                name = "CE" if base is ce_eq else "word-KD"
                delta = tie["bleu"] - base["bleu"]
                out.append(f"- **Equal compute ({main_size})**: a {name} student given the TIE-KD student's CPU "
                           f"time ({fmt(hours(base['cpu_seconds']))} vs {fmt(hours(tie['cpu_seconds']))} CPU-h, "
                           f"{fmt(base['num_updates'], digits=0)} updates instead of {fmt(tie['num_updates'], digits=0)}) "
                           f"scores {fmt(base['bleu'], base['bleu_sd'])} BLEU: TIE-KD is "
                           f"{'ahead' if delta > 0 else 'behind'} by {abs(delta):.2f} BLEU "
                           f"({tie['chrf'] - base['chrf']:+.2f} chrF; best validation CE "
                           f"{fmt(base['best_valid_loss'], digits=3)} vs TIE-KD's {fmt(tie['best_valid_loss'], digits=3)}).")
    if teacher:
        out.append(f"- The teacher scores {teacher['bleu']:.2f} BLEU; the best student "
                   f"{max(s['bleu'] for s in summary.values()):.2f}.")
    return "\n".join(out)


def how_it_was_run(work, records, teacher=None):
    grid_json = os.path.join(work, "grid.json")
    grid = json.load(open(grid_json)) if os.path.exists(grid_json) else {}
    one = records[0]
    cpu = sum(r.get("cpu_seconds") or 0 for r in records) / 3600
    teacher_cpu = (teacher or {}).get("cpu_seconds") or 0
    lines = []
    if grid:
        wall = grid.get("wall_minutes") or 0  # 0: no invocation ran to its end (each was stopped)
        lines += [f"- Command: `{grid.get('command')}`: "
                  + (f"{wall / 60:.1f} h from the first invocation's start to the last one's end, " if wall else "")
                  + f"{len(grid.get('invocations', []))} invocation(s) (re-running it skips what is done); "
                  f"the students' training took {cpu:.1f} CPU-hours in all"
                  + (f", the teacher's {teacher_cpu / 3600:.1f}." if teacher_cpu else "."),
                  f"- Machine: {grid.get('machine')}; torch {grid.get('torch')}, fairseq {grid.get('fairseq')}, "
                  f"sacreBLEU {one.get('sacrebleu_version')}; commit {grid.get('commit')}; {grid.get('jobs')} runs "
                  f"trained at once, {grid.get('threads')} torch thread(s) each.",
                  f"- Data: {grid.get('data_note', '')}"]
    lines += [f"- Evaluation: average of the last {len(one['checkpoints'])} checkpoints (`tiekd-eval "
              f"--average-last {len(one['checkpoints'])}`), beam {one['beam']}, lenpen {one['lenpen']}, "
              f"SentencePiece undone, sacreBLEU on the {one['n']:,}-sentence test set; BLEU `{one['bleu_signature']}`, "
              f"chrF `{one['chrf_signature']}`."]
    return "\n".join(lines)


def teacher_line(teacher):
    if not teacher:
        return ""
    stopped = {"patience": "stopped by patience", "max_update": "stopped at its update cap"}.get(teacher.get("stopped"), "")
    cpu = f", {hours(teacher['cpu_seconds']):.2f} CPU-h" if teacher.get("cpu_seconds") else ""
    return (f"Teacher (`{teacher['arch']}`, {teacher['params'] / 1e6:.2f}M params, {teacher['num_updates']:,} updates, "
            f"{stopped}{cpu}; distilled from the average of its last {len(teacher['checkpoints'])} checkpoints): "
            f"**BLEU {teacher['bleu']:.2f}, chrF {teacher['chrf']:.2f}**.")


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
    grid_json = os.path.join(work, "grid.json")
    grid = json.load(open(grid_json)) if os.path.exists(grid_json) else {}
    return f"{grid['src']}-{grid['tgt']}" if "src" in grid else os.path.basename(os.path.abspath(work))


def headline(works, data):
    """A few lines for the README: the main size's methods, significance, equal compute, the
    capacity gap and the other pairs, all from the records."""
    main = works[0]
    _, summary, boot_word, _, teacher = data[main][:5]
    size = equal_compute_size(summary) or max(sizes_in_order(summary),
                                               key=lambda z: sum(zz == z for zz, _ in summary))
    lines = []
    methods = [m for m in METHOD_NAMES if not m.endswith(EQTIME) and (size, m) in summary]
    seeds = max(len(summary[(size, m)]["seeds"]) for m in methods)
    lines.append(f"- {pair_name(main)}, {size} students ({summary[(size, methods[0])]['params'] / 1e6:.2f}M params, "
                 f"{seeds} seed(s)), test BLEU / chrF: " + "; ".join(
                     f"{METHOD_NAMES[m]} {fmt(summary[(size, m)]['bleu'], summary[(size, m)]['bleu_sd'])} / "
                     f"{fmt(summary[(size, m)]['chrf'])}" for m in methods)
                 + (f" (teacher {teacher['bleu']:.2f} / {teacher['chrf']:.2f})." if teacher else "."))
    if any(r["size"] == size for r in boot_word):
        won_b, n = wins(boot_word, size, "BLEU")
        won_c, _ = wins(boot_word, size, "chrF2")
        lines.append(f"- TIE-KD beat word-KD significantly (paired bootstrap, p < 0.05) in {won_b} of {n} seeds "
                     f"by BLEU and {won_c} of {n} by chrF.")
    tie, word = summary.get((size, "tie_kd")), summary.get((size, "word_kd"))
    if tie and word and tie["length_ratio"] is not None and word["length_ratio"] is not None:
        lines.append(f"- Length: TIE-KD's translations are {tie['length_ratio']:.3f} of the reference length, "
                     f"word-KD's {word['length_ratio']:.3f}; without BLEU's brevity penalty TIE-KD scores "
                     f"{fmt(tie['bleu_without_bp'])}, word-KD {fmt(word['bleu_without_bp'])}.")
    for base in ("ce_eqtime", "word_kd_eqtime"):
        b = summary.get((size, base))
        if tie and b:
            lines.append(f"- Equal compute: {METHOD_NAMES[base]} ({fmt(b['num_updates'], digits=0)} updates) scored "
                         f"{fmt(b['bleu'], b['bleu_sd'])} BLEU / {fmt(b['chrf'])} chrF against TIE-KD's "
                         f"{fmt(tie['bleu'])} / {fmt(tie['chrf'])}.")
    sizes = sizes_in_order(summary)
    gains = [(z, summary[(z, "tie_kd")]["gain_over_word_kd"]) for z in sizes
             if (z, "tie_kd") in summary and summary[(z, "tie_kd")]["gain_over_word_kd"] is not None]
    if len(gains) > 1:
        lines.append("- TIE-KD minus word-KD BLEU by student size (largest teacher-student gap first): "
                     + ", ".join(f"{z} {signed(g)}" for z, g in gains) + ".")
    for other in works[1:]:
        o_summary = data[other][1]
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


def render(works, data, plots):
    main = works[0]
    records, summary, boot_word, boot_ce, teacher = data[main][:5]
    sizes = sizes_in_order(summary)
    main_size = equal_compute_size(summary)
    name = pair_name(main)
    parts = ["# Results: TIE-KD vs CE, word-KD and seq-KD students, measured", "",
             "Generated by `python examples/results_table.py` from the JSON records of "
             "`python examples/run_grid.py` (tiekd-eval's `eval-*.json` and the runner's `train.json` "
             "per run). Do not edit by hand.", "",
             "## Headline", "", headline(works, data), "",
             f"## {name}: how it was run", "", how_it_was_run(main, records, teacher), "",
             "- Every student trains until its validation CE has not improved for the runner's `--patience` "
             "validations, or to the shared update cap; the `updates` column says where they stopped. "
             "CPU-h is the training process's own CPU time (user + system, all threads; robust to other "
             "work sharing the cores, unlike wall time, which is given beside it).", "",
             teacher_line(teacher), "",
             f"## {name}: BLEU and chrF, mean ± sd over seeds", "", results_table(summary), "",
             "Δ columns: difference of the mean BLEU. hyp/ref length: the translations' length over the "
             "references' (sacreBLEU's tokens; below 1 BLEU's brevity penalty applies).", ""]
    if boot_word:
        parts += ["### TIE-KD vs word-KD: paired bootstrap (sacreBLEU `--paired-bs`, 1000 resamples)", "",
                  bootstrap_table(boot_word), "", f"Signature: `{boot_word[0]['BLEU']['signature']}`", ""]
    if boot_ce:
        parts += ["### TIE-KD vs CE: paired bootstrap", "", bootstrap_table(boot_ce), ""]
    if main_size:
        parts += [f"## Equal compute ({main_size}): does TIE-KD pay for itself?", "",
                  "CE and word-KD students given the CPU time that the TIE-KD student of the same seed used "
                  "(`*_eqtime` runs: as many updates as that time buys at their own CPU-seconds per update, "
                  "rounded to whole checkpoint intervals; no early stop).", "",
                  equal_compute_table(summary, main_size), ""]
        eq_boot = [r for r in data[main][5] if r["size"] == main_size]
        if eq_boot:
            parts += ["TIE-KD vs CE given TIE-KD's CPU time, paired bootstrap:", "", bootstrap_table(eq_boot), ""]
    if plots.get("compute"):
        parts += ["## Quality against compute", "", f"![BLEU vs training CPU-hours]({plots['compute']})", ""]
    if plots.get("curves"):
        parts += [f"Validation CE of the {main_size} students as they train (one point per validation):", "",
                  f"![validation CE vs training CPU-hours]({plots['curves']})", ""]
    if plots.get("gap"):
        parts += ["## Capacity gap", "", f"![BLEU gain over CE vs capacity gap]({plots['gap']})", ""]
    for other in works[1:]:
        o_records, o_summary, o_word, o_ce, o_teacher = data[other][:5]
        parts += [f"## {pair_name(other)}", "", how_it_was_run(other, o_records, o_teacher), "", teacher_line(o_teacher), "",
                  results_table(o_summary), ""]
        if o_word:
            parts += ["TIE-KD vs word-KD, paired bootstrap:", "", bootstrap_table(o_word), ""]
        if o_ce:
            parts += ["TIE-KD vs CE, paired bootstrap:", "", bootstrap_table(o_ce), ""]
    parts += ["## Against the paper", "", f"The paper reports {PAPER}.", "",
              f"### {name}", "", findings(summary, boot_word, boot_ce, main_size, teacher), ""]
    for other in works[1:]:
        o_records, o_summary, o_word, o_ce, o_teacher = data[other][:5]
        parts += [f"### {pair_name(other)}", "", findings(o_summary, o_word, o_ce, None, o_teacher), ""]
    parts += ["## Read with care", "",
              "- Scale: tens of thousands of sentence pairs and students of 0.4-1M parameters trained on two CPU "
              "cores; the paper's models have 100-200x more parameters and train on millions of pairs. The update "
              "cap was chosen to fit the CPU budget: a run that stopped at the cap was still improving.",
              "- sd is the sample standard deviation over seeds; with 3 seeds it is itself uncertain.",
              "- seq-KD's CPU time includes the teacher translating the training set in its first run only "
              "(the others reuse the shared cache, `--pseudo-cache-dir`); TIE-KD + pool's includes "
              "translating a pool shard each epoch.", ""]
    parts += [f"## Commands per method ({name}; WORK is the runner's `--work`)", ""] + commands(main, records)
    return "\n".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", action="append", help="a grid's --work (repeat; the first is the main pair)")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--bootstrap-samples", type=int, default=1000)
    args = ap.parse_args(argv)
    works = args.work or ["work/grid"]
    data = {}
    for work in works:
        records = load_records(work)
        if not records:
            raise SystemExit(f"{work}: no evaluated runs (runs/*/eval-*.json); run examples/run_grid.py first")
        boot = lambda base: paired_bootstrap(records, baseline=base, n_samples=args.bootstrap_samples)
        data[work] = (records, summarize(records), boot("word_kd"), boot("ce"), load_teacher(work), boot("ce_eqtime"))
    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    plots = {}
    records, summary, _, _, teacher, _ = data[works[0]]
    if teacher and len(sizes_in_order(summary)) > 1:
        plots["gap"] = stem + "_capacity_gap.png"
        capacity_gap_plot(summary, teacher["params"], os.path.join(out_dir, plots["gap"]))
    if any(s["cpu_seconds"] for s in summary.values()):
        plots["compute"] = stem + "_compute.png"
        compute_plot(summary, os.path.join(out_dir, plots["compute"]))
    main_size = equal_compute_size(summary)
    if main_size and any(r["valid_curve"] for r in records):
        plots["curves"] = stem + "_valid_curves.png"
        learning_curve_plot(records, main_size, os.path.join(out_dir, plots["curves"]))
    text = render(works, data, plots)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    for work in works:
        with open(os.path.join(work, "summary.json"), "w") as f:
            json.dump({f"{size}/{method}": s for (size, method), s in data[work][1].items()}, f, indent=1)
    print(f"wrote {args.out}" + "".join(f" and {p}" for p in plots.values()))


if __name__ == "__main__":
    main()
