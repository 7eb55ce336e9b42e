"""examples/results_table.py on fixture JSON records: means, sds, gains, bootstrap, plot."""
import json
import os
import shutil
import sys

import pytest
import sacrebleu

import utils

sys.path.insert(0, os.path.join(utils.REPO, "examples"))
import results_table  # noqa: E402

REFS = ["the cat sat on the mat", "a dog ran in the park", "hello there my friend", "it is raining today",
        "we like green tea", "this is a small test"]
HYPS = {"ce": ["the cat", "a dog", "hello", "it rains", "we like tea", "this is"],
        "word_kd": ["the cat sat", "a dog ran", "hello there", "it is raining", "we like tea", "this is a test"],
        "tie_kd": REFS[:5] + ["this is a test"]}
HYPS["ce_eqtime"] = HYPS["word_kd"]
HYPS["seq_kd"] = REFS
BLEU = {  # (size, method): BLEU per seed
    ("micro", "ce"): [10.0, 12.0, 14.0], ("micro", "word_kd"): [11.0, 13.0, 15.0],
    ("micro", "tie_kd"): [13.0, 15.5, 16.5],  # minus word-KD per seed: +2, +2.5, +1.5
    ("micro", "ce_eqtime"): [12.0, 14.0, 16.0],
    ("micro", "seq_kd"): [14.0, 16.0, 17.0],  # minus TIE-KD: +1, +0.5, +0.5
    # nano: word-KD has a second seed that TIE-KD and CE lack (paired: seed 1 only)
    ("nano", "ce"): [8.0], ("nano", "word_kd"): [9.0, 7.0], ("nano", "tie_kd"): [10.5],
}
CPU = {"ce": 1000.0, "word_kd": 2000.0, "seq_kd": 2500.0, "tie_kd": 4000.0, "ce_eqtime": 4000.0}
PARAMS = {"micro": 650_000, "nano": 300_000}
GRID_ARGV = ["--sizes", "micro:3,nano:2:ce+word_kd+tie_kd", "--methods", "ce,word_kd,tie_kd",
             "--eqtime", "micro:3", "--eqtime-methods", "ce_eqtime", "--updates", "800"]


def eval_record(run, size, method, seed, bleu, ref, **extra):
    record = {
        "size": size, "method": method, "seed": seed, "params": PARAMS[size], "bleu": bleu,
        "chrf": bleu + 20, "teacher_top1_agree": 0.5 + seed / 100, "num_updates": 800,
        "hyp": str(run / "out.hyp"), "ref": str(ref), "n": 6, "beam": 4, "lenpen": 0.6,
        "checkpoints": ["checkpoint_1_750.pt", "checkpoint_1_800.pt"], "gen_subset": "test",
        "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
        "chrf_signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0",
        "sacrebleu_version": "2.6.0", **extra}
    if size == "nano":  # records of an older tiekd-eval: the subset only in the file name
        del record["gen_subset"]
    return json.dumps(record)


@pytest.fixture
def work(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(REFS) + "\n")
    for (size, method), scores in BLEU.items():
        for seed, bleu in enumerate(scores, 1):
            run = tmp_path / "runs" / f"{size}-{method}-s{seed}"
            run.mkdir(parents=True)
            (run / "out.hyp").write_text("\n".join(HYPS[method]) + "\n")
            (run / "eval-test.json").write_text(eval_record(run, size, method, seed, bleu, ref))
            (run / "train.json").write_text(json.dumps({
                "train_seconds": 60.0 * seed, "updates_per_second": 800 / (60.0 * seed), "peak_rss_mib": 500 + seed,
                "cpu_seconds": CPU[method] * seed, "stopped": "patience" if seed == 1 else "max_update",
                "best_valid_loss": 5.0 + seed,
                "command": f"fairseq-train DATA --user-dir /somewhere/tiekd_fairseq --criterion {method}"}))
            # validations every 400 updates, falling by 0.1 per 400 (0.25 per 1,000)
            (run / "train.log").write_text("".join(
                f"| valid on 'valid' subset | loss {5.0 + seed + 0.1 * (2 - i):.3f} | nll_loss 4.0 | num_updates {400 * i}\n"
                for i in range(3)))
    # records that must not count: a validation-set evaluation, and an older test evaluation
    tie1, ce1 = tmp_path / "runs" / "micro-tie_kd-s1", tmp_path / "runs" / "micro-ce-s1"
    (tie1 / "eval-valid.json").write_text(eval_record(tie1, "micro", "tie_kd", 1, 99.0, ref, gen_subset="valid"))
    (ce1 / "eval-test-old.json").write_text(eval_record(ce1, "micro", "ce", 1, 50.0, ref))
    os.utime(ce1 / "eval-test-old.json", (1e9, 1e9))
    tie2 = tmp_path / "runs" / "micro-tie_kd-s2"  # re-scored later with another lenpen (docs/evaluate.md)
    (tie2 / "eval-test-avg2-beam4-lenpen1.json").write_text(eval_record(tie2, "micro", "tie_kd", 2, 77.0, ref, lenpen=1.0))
    (tmp_path / "runs" / "nano-ce-s1" / "eval-valid.json").write_text(
        eval_record(tmp_path / "runs" / "nano-ce-s1", "nano", "ce", 1, 88.0, ref))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "eval-test.json").write_text(json.dumps(
        {"arch": "tie_kd_transformer_tiny", "params": 1_300_000, "num_updates": 2200, "bleu": 20.0, "chrf": 45.0,
         "checkpoints": ["a.pt", "b.pt"]}))
    (tmp_path / "teacher" / "train.json").write_text(json.dumps({"cpu_seconds": 7200.0, "stopped": "patience"}))
    (tmp_path / "grid.json").write_text(json.dumps({
        "src": "en", "tgt": "de", "command": "python examples/run_grid.py",
        "jobs": 2, "threads": 1, "commit": "bbb2222",
        "invocations": [{"start": "2026-11-30 08:00:00", "argv": GRID_ARGV[:-1] + ["400"], "commit": "aaa1111"},
                        {"start": "2026-11-30 09:00:00", "argv": GRID_ARGV, "commit": "bbb2222"}]}))
    return tmp_path


def records_of(work):
    records, teacher = results_table.load_records(str(work))
    assert teacher["bleu"] == 20.0  # the teacher's record comes with them
    return records


def test_means_sds_and_paired_gains(work):
    summary = results_table.summarize(records_of(work))
    ce, word, tie = (summary[("micro", m)] for m in ("ce", "word_kd", "tie_kd"))
    assert (ce["bleu"], ce["bleu_sd"]) == (pytest.approx(12.0), pytest.approx(2.0))
    assert (tie["bleu"], tie["bleu_sd"], tie["chrf"]) == (pytest.approx(15.0), pytest.approx(3.25 ** 0.5),
                                                          pytest.approx(35.0))
    # paired over seeds: the mean and sd of the per-seed differences
    assert (tie["gain_over_ce"], tie["gain_over_ce_sd"], tie["gain_over_ce_n"]) == (
        pytest.approx(3.0), pytest.approx(0.5), 3)
    assert (tie["gain_over_word_kd"], tie["gain_over_word_kd_sd"]) == (pytest.approx(2.0), pytest.approx(0.5))
    assert word["gain_over_ce"] == pytest.approx(1.0) and word["gain_over_word_kd"] is None
    assert tie["chrf_gain_over_word_kd"] == pytest.approx(2.0)
    assert ce["gain_over_ce"] is None
    assert tie["train_seconds"] == pytest.approx(120.0) and tie["peak_rss_mib"] == pytest.approx(502.0)
    assert tie["cpu_seconds"] == pytest.approx(8000.0) and tie["stopped_by_patience"] == 1 and tie["at_cap"] == 2
    assert tie["teacher_top1_agree"] == pytest.approx(0.52)
    nano = summary[("nano", "tie_kd")]
    assert nano["bleu_sd"] is None and nano["gain_over_ce"] == pytest.approx(2.5)
    # word-KD's mean is 8.0 over two seeds, but only seed 1 pairs with TIE-KD: 10.5 - 9.0
    assert (nano["gain_over_word_kd"], nano["gain_over_word_kd_n"]) == (pytest.approx(1.5), 1)
    eq = summary[("micro", "ce_eqtime")]
    assert (eq["gain_over_tie_kd"], eq["gain_over_tie_kd_sd"]) == (pytest.approx(-1.0), pytest.approx(0.5))


def test_which_test_evaluation_counts(work):
    records = {(r["size"], r["method"], r["seed"]): r for r in records_of(work)}
    assert records[("micro", "tie_kd", 1)]["bleu"] == 13.0  # not the validation-set record's 99
    assert records[("micro", "ce", 1)]["bleu"] == 10.0  # not the older test record's 50
    assert records[("micro", "tie_kd", 2)]["bleu"] == 15.5  # not the newer one at lenpen 1.0 that no other run has
    assert records[("nano", "ce", 1)]["bleu"] == 8.0  # eval-valid.json without gen_subset: a validation record
    assert len(records) == sum(len(v) for v in BLEU.values())


def test_validation_curves(work):
    record = records_of(work)[0]
    assert record["valid_curve"] == [(0, 6.2), (400, 6.1), (800, 6.0)]
    assert record["valid_fall_1k"] is None  # a shorter stretch than 1,000 updates
    assert results_table.valid_fall([(0, 6.2), (500, 6.1), (1000, 6.0), (1500, 5.95)]) == pytest.approx(0.15)
    assert results_table.valid_fall([]) is None
    runs = [{"valid_curve": [(400, 6.0), (800, 5.0)], "cpu_seconds": 3600.0},
            {"valid_curve": [(400, 7.0), (800, 6.0), (1200, 5.5)], "cpu_seconds": 3 * 3600.0}]
    assert results_table.mean_curve(runs) == [(pytest.approx(0.75), 6.5), (pytest.approx(1.5), 5.5)]  # (0.5+1)/2, (1+2)/2


def test_length_terms_come_from_the_translations(work):
    records = {(r["size"], r["method"], r["seed"]): r for r in records_of(work)}
    ce = records[("micro", "ce", 1)]
    expected = sacrebleu.corpus_bleu(HYPS["ce"], [REFS])
    assert ce["length_ratio"] == pytest.approx(12 / 29)  # 12 hypothesis tokens for 29 reference tokens
    assert ce["brevity_penalty"] == pytest.approx(expected.bp) and expected.bp < 0.5
    assert records[("micro", "word_kd", 1)]["length_ratio"] == pytest.approx(18 / 29)
    summary = results_table.summarize(list(records.values()))
    assert summary[("micro", "tie_kd")]["length_ratio"] == pytest.approx(28 / 29)


def test_paired_bootstrap_uses_the_hypothesis_files(work):
    rows = results_table.paired_bootstrap(records_of(work), n_samples=200)
    # smallest student first, then by seed
    assert [(r["size"], r["seed"]) for r in rows] == [("nano", 1), ("micro", 1), ("micro", 2), ("micro", 3)]
    assert [r["size"] for r in results_table.paired_bootstrap(
        records_of(work), baseline="ce", n_samples=100)] == ["nano"] + ["micro"] * 3
    expected = sacrebleu.corpus_bleu(HYPS["tie_kd"], [REFS]).score
    assert rows[1]["BLEU"]["system"] == pytest.approx(expected)
    assert rows[1]["BLEU"]["baseline"] == pytest.approx(sacrebleu.corpus_bleu(HYPS["word_kd"], [REFS]).score)
    assert 0 < rows[1]["BLEU"]["p_value"] <= 1 and rows[1]["n_samples"] == 200


def test_p_values_and_verdicts():
    row = {"n_samples": 1000, "BLEU": {"p_value": 1 / 1001}, "chrF2": {"p_value": 0.012}}
    assert results_table.p_value(row, "BLEU") == "≤ 0.001"  # sacreBLEU's floor: 1 / (resamples + 1)
    assert results_table.p_value(row, "chrF2") == "0.012"
    assert results_table.verdict(3, 0, 3) == "holds"
    assert results_table.verdict(1, 0, 3) == "mixed"
    assert results_table.verdict(0, 0, 2).startswith("not shown")
    assert results_table.verdict(0, 2, 2) == "does not hold (significantly worse in 2 of 2 seeds)"


def test_missing_runs_follow_the_grid_plan(work):
    records = records_of(work)
    assert results_table.missing_runs(str(work), records) == ["nano-ce-s2", "nano-tie_kd-s2"]


def test_markdown_and_plots(work, tmp_path_factory):
    second = tmp_path_factory.mktemp("second")  # a second language pair: the same records
    for path in work.iterdir():
        if path.is_dir():
            shutil.copytree(path, second / path.name)
    (second / "grid.json").write_text(json.dumps({"src": "en", "tgt": "fr"}))
    pending = tmp_path_factory.mktemp("pending")  # a third pair that has not evaluated anything
    (pending / "grid.json").write_text(json.dumps({"src": "en", "tgt": "es", "invocations": [
        {"start": "2026-11-30 10:00:00", "argv": ["--sizes", "micro:1", "--methods", "ce"]}]}))
    out = work / "results.md"
    results_table.main(["--work", str(work), "--work", str(second), "--work", str(pending), "--out", str(out),
                        "--bootstrap-samples", "100"])
    text = out.read_text()
    assert ("| micro | 0.65M | TIE-KD | 3 | 15.00 ± 1.80 | 35.00 ± 1.80 | +3.00 ± 0.50 | +2.00 ± 0.50 | +2.00 ± 0.50 "
            "| 0.966 | 800 | 1 of 3 | 7.000 | — | 0.520 | 2.22 | 0.03 | 502 |") in text  # validated over 800 updates only
    assert "| nano | 0.30M | TIE-KD | 1 | 10.50 | 30.50 | +2.50 | +1.50 | +1.50 |" in text
    assert "| nano | 0.30M | word-KD | 2 | 8.00 ± 1.41 | 28.00 ± 1.41 | +1.00 (n=1) | — |" in text
    assert "## en-de: BLEU and chrF mean ± sd over seeds" in text  # not all runs stopped at the cap
    assert ("- Convergence: 9 of 16 students stopped at the update cap (800 updates), 7 because validation CE "
            "stopped improving.") in text
    assert "**micro, TIE-KD beats the student without KD** (paper: +0.60 to +1.11 BLEU" in text
    assert "+3.00 ± 0.50 BLEU paired (+25% of CE's 12.00), +3.00 ± 0.50 chrF" in text
    assert ("tested here as *TIE-KD beats word-KD by BLEU at every student size*: ") in text
    assert "by size, largest gap first, nano +1.50 (" in text and "(1 seed only)), micro +2.00 ± 0.50 (" in text
    assert ("**micro, seq-KD vs TIE-KD** (not in the paper's comparison): +0.67 ± 0.29 BLEU, +0.67 ± 0.29 chrF "
            "(paired); significantly better by BLEU in") in text
    assert "seq-KD vs TIE-KD (sacreBLEU's paired bootstrap" in text
    assert "| TIE-KD minus row, BLEU (paired) | TIE-KD minus row, chrF |" in text
    assert "**micro, cost** (paper's peers: word-KD 2.5-4x plain training's GPU-hours): word-KD took 2.0x" in text
    assert "BLEU 20.00, chrF 45.00" in text and "stopped by patience, 2.00 CPU-h" in text
    assert "## Equal compute (micro)" in text and "CPU-hours in all, the teacher's 2.0." in text
    assert ("| CE, TIE-KD's CPU time | 3 | 800 | 2.22 | 1.00 | 0.03 | 14.00 ± 2.00 | 34.00 ± 2.00 "
            "| +1.00 ± 0.50 | +1.00 ± 0.50 |") in text
    assert "a CE student given the TIE-KD student's CPU time (2.22 vs 2.22 CPU-h" in text
    assert "2.22 vs 2.22 CPU-h, 800 updates instead of 800; means over the 3 seed(s) both have" in text
    assert "TIE-KD is ahead of it (+1.00 ± 0.50 BLEU, +1.00 ± 0.50 chrF, paired; significantly better by BLEU in" in text
    assert "TIE-KD vs CE, TIE-KD's CPU time (sacreBLEU's paired bootstrap, `--paired-bs`, 100 resamples" in text
    assert "## en-de: how it was run" in text and "## en-fr" in text and "### en-fr" in text
    assert "## en-es: pending" in text and "- en-es: no run evaluated yet." in text
    assert "- **Incomplete**: the grid has not finished; runs missing: en-de 2, en-es 1 (listed at the end); records" in text
    assert "- en-de: nano-ce-s2, nano-tie_kd-s2" in text and "- en-es: micro-ce-s1" in text
    assert ("- Invocation 1 (2026-11-30 08:00:00) differed from the last: `--updates 400`, `commit aaa1111`.") in text
    assert ("- en-de, micro students (0.65M params, 3 seed(s)), test BLEU / chrF: CE (no KD) 12.00 ± 2.00 / 32.00; "
            "word-KD 13.00 ± 2.00 / 33.00; seq-KD 15.67 ± 1.53 / 35.67; TIE-KD 15.00 ± 1.80 / 35.00 "
            "(teacher 20.00 / 45.00).") in text
    assert "- TIE-KD vs word-KD: +2.00 ± 0.50 BLEU, +2.00 ± 0.50 chrF (paired over seeds)" in text
    assert "- Equal compute: a CE student given the TIE-KD student's CPU time" in text
    assert "- TIE-KD minus word-KD BLEU by student size (largest teacher-student gap first): nano +1.50, micro +2.00 ± 0.50." in text
    assert "- Length: TIE-KD's translations are 0.966 of the reference length, word-KD's 0.621" in text
    assert "- en-fr, nano: CE (no KD) 8.00; word-KD 8.00 ± 1.41; TIE-KD 10.50 BLEU." in text
    assert "students of 0.30-0.65M parameters" in text and "about 92-200x more" in text
    assert "--user-dir tiekd_fairseq --criterion tie_kd" in text and "/somewhere" not in text
    for plot in ("results_capacity_gap.png", "results_compute.png", "results_valid_curves.png"):
        assert (work / plot).stat().st_size > 1000


def run_record(size, method, seed, bleu=10.0, **extra):
    return {"size": size, "method": method, "seed": seed, "params": PARAMS[size], "bleu": bleu, "chrf": bleu + 20,
            **extra}


def test_convergence_wording():
    line = lambda records: results_table.convergence_line(results_table.summarize(records))
    mixed = [run_record("micro", "ce", 1, stopped="patience", num_updates=3500, valid_fall_1k=-0.02),
             run_record("micro", "ce", 2, stopped="max_update", num_updates=5000, valid_fall_1k=0.1)]
    assert line(mixed) == ("1 of 2 students stopped at the update cap (5,000 updates), 1 because validation CE "
                           "stopped improving; over the last 1,000 updates of those at the cap, validation CE still "
                           "fell by 0.100 to 0.100 bits.")  # the patience run's 3,500 and its rise are not the cap's
    at_cap = lambda *falls: [run_record("micro", "ce", seed, stopped="max_update", num_updates=5000, valid_fall_1k=f)
                             for seed, f in enumerate(falls, 1)]
    capped = at_cap(0.1, 0.05)
    assert "**None converged**" in line(capped)
    assert results_table.all_at_cap(results_table.summarize(capped))  # the table is titled "at the update cap"
    assert not results_table.all_at_cap(results_table.summarize(mixed))
    plateau = at_cap(0.1, -0.02)
    assert "changed by -0.100 to +0.020 bits" in line(plateau) and "None converged" not in line(plateau)


def test_teacher_line_with_a_rising_loss_and_few_fields():
    teacher = {"bleu": 20.0, "chrf": 45.0, "valid_fall_1k": -0.01, "stopped": "max_update"}
    assert results_table.teacher_line(teacher) == (
        "Teacher (`?`, stopped at its update cap; over its last 1,000 updates its validation CE rose 0.010 bits): "
        "**BLEU 20.00, chrF 45.00**.")


def test_grid_records_the_report_cannot_plan(capsys):
    assert results_table.planned_runs({"invocations": [{"argv": ["--sizes", "huge:3"]}]}) == []
    assert "cannot be planned" in capsys.readouterr().err
    assert results_table.planned_runs({"invocations": [{"start": "x"}]}) == []
    # an --evaluate-only invocation (given fewer options) does not replace the plan
    plan = results_table.planned_runs({"invocations": [{"argv": ["--sizes", "nano:1", "--methods", "ce"]},
                                                       {"argv": ["--evaluate-only"]}]})
    assert [name for name, *_ in plan] == ["nano-ce-s1"]
    assert results_table.invocation_differences([{}, {"argv": ["--updates", "5"]}]) == [
        "- Invocation 1 (?) differed from the last: `--updates (unset)`. Runs it finished were kept.",
        "- The invocations' own commits were not recorded (the runner records them since 2026-11-30); "
        "the commit below is the last invocation's."]


def test_partial_seeds_and_no_shared_seed():
    records = [run_record("micro", "tie_kd", s, bleu=b, cpu_seconds=4000.0, num_updates=800)
               for s, b in ((1, 12.0), (2, 14.0), (3, 16.0))]
    records += [run_record("micro", "ce_eqtime", 1, bleu=11.0, cpu_seconds=4100.0, num_updates=3000)]
    records += [run_record("micro", "ce", 3, bleu=9.0, cpu_seconds=1000.0)]
    records += [run_record("nano", "tie_kd", 1, bleu=5.0), run_record("nano", "ce", 2, bleu=4.0)]  # no shared seed
    summary = results_table.summarize(records)
    assert summary[("nano", "tie_kd")]["gain_over_ce"] is None and summary[("nano", "tie_kd")]["gain_over_ce_n"] == 0
    text = "\n".join(results_table.paper_claims(summary, {"word_kd": [], "ce": []}))
    assert "nano, TIE-KD beats" not in text and "micro, TIE-KD beats the student without KD" in text
    eq = results_table.equal_compute_findings(summary, "micro", {})
    # over seed 1 only: 1.14 vs 1.11 CPU-h, 3000 vs 800 updates, TIE-KD's 12.0 vs 11.0 BLEU
    assert "(1.14 vs 1.11 CPU-h, 3000 updates instead of 800; means over the 1 seed(s) both have)" in eq[0]
    assert "TIE-KD is ahead of it (+1.00 BLEU" in eq[0]


def test_a_pair_without_teacher_or_plan(work, tmp_path_factory):
    other = tmp_path_factory.mktemp("noteacher")
    shutil.copytree(work / "runs", other / "runs")
    (other / "grid.json").write_text(json.dumps({"src": "en", "tgt": "ro"}))
    out = work / "two.md"
    results_table.main(["--work", str(work), "--work", str(other), "--out", str(out), "--bootstrap-samples", "50"])
    text = out.read_text()
    assert "## en-ro: how it was run" in text and "### en-ro" in text
    with pytest.raises(SystemExit, match="no evaluated run"):
        results_table.main(["--work", str(tmp_path_factory.mktemp("empty")), "--out", str(work / "x.md")])


def test_reads_references_as_tiekd_eval_does(tmp_path):
    from tiekd_fairseq.evaluate import read_lines

    ref = tmp_path / "ref.txt"
    ref.write_bytes(b"one\r\ntwo a\rb\r\nthree")  # CRLF, a stray carriage return, no final newline
    assert results_table.read_lines(ref) == read_lines(ref) == ["one", "two a\rb", "three"]


def test_wall_span_starts_at_a_stopped_invocation():
    # a grid run across sessions: the first invocations were stopped, only the last ran to its end
    invocations = [{"start": "2026-11-30 08:00:00", "minutes": None},
                   {"start": "2026-11-30 09:00:00", "minutes": 30.0}]
    assert results_table.span_minutes(invocations) == pytest.approx(90.0)
    assert results_table.span_minutes(invocations[:1]) == 0.0  # none ran to its end: no span is claimed
