"""examples/run_grid.py on a tiny grid of toy runs: resumable, a finished grid trains nothing."""
import json
import os
import re
import subprocess
import sys

import utils

RUNNER = os.path.join(utils.REPO, "examples", "run_grid.py")


def run_grid(work, data, ref, *extra):
    proc = subprocess.run(
        [sys.executable, RUNNER, *extra, "--work", work, "--data", data, "--ref", ref,
         "--src", "src", "--tgt", "tgt", "--post-process", "none", "--teacher-arch", "tie_kd_transformer_micro",
         "--teacher-updates", "6", "--updates", "4", "--sizes", "micro:1", "--methods", "ce,tie_kd",
         "--save-every", "2", "--average-last", "2", "--max-tokens", "1500", "--jobs", "1"],
        capture_output=True, text=True, env=utils.CHILD_ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def grid_status(work):
    proc = subprocess.run([sys.executable, RUNNER, "--status", "--work", work],
                          capture_output=True, text=True, env=utils.CHILD_ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_finished_grid_trains_nothing_and_a_killed_run_resumes(toy_data, tmp_path):
    data = tmp_path / "bin"  # the grid's students share all embeddings: one dictionary
    utils.preprocess(toy_data.parent / "raw", data, "--joined-dictionary")
    first = run_grid(tmp_path, data, toy_data.parent / "raw" / "test.tgt")
    runs = ["micro-ce-s1", "micro-tie_kd-s1"]
    for name in runs:
        assert f"{name}: train" in first and f"{name}: evaluate" in first
        (record,) = (tmp_path / "runs" / name).glob("eval-test-avg2-*.json")
        record = json.loads(record.read_text())
        assert record["checkpoints"] == ["checkpoint_1_2.pt", "checkpoint_1_4.pt"] and record["num_updates"] == 4
        assert record["method"] == name.split("-")[1] and 0 <= record["bleu"] <= 100
        assert json.loads((tmp_path / "runs" / name / "train.json").read_text())["updates"] == 4
    logs = {name: (tmp_path / "runs" / name / "train.log").read_text() for name in runs}

    second = run_grid(tmp_path, data, toy_data.parent / "raw" / "test.tgt")
    assert "teacher: trained" in second
    for name in runs:
        assert f"{name}: trained" in second and f"{name}: train\n" not in second
        assert f"{name}: evaluate" not in second
        assert (tmp_path / "runs" / name / "train.log").read_text() == logs[name]  # fairseq never started

    # a run killed before it finished (no train.json) resumes from its checkpoint_last.pt
    os.remove(tmp_path / "runs" / "micro-ce-s1" / "train.json")
    status = grid_status(tmp_path)  # --work alone: the settings of the last invocation
    assert re.search(r"^teacher +evaluated: 6 updates \(max_update\)", status, re.M), status
    assert re.search(r"^micro-tie_kd-s1 +evaluated: 4 updates", status, re.M), status
    assert re.search(r"^micro-ce-s1 +training: 4 updates so far .*\(left: unknown\)$", status, re.M), status
    assert "2 of 3 runs trained" in status
    third = run_grid(tmp_path, data, toy_data.parent / "raw" / "test.tgt")
    assert "micro-ce-s1: resume" in third and "micro-tie_kd-s1: trained" in third
    resumed = (tmp_path / "runs" / "micro-ce-s1" / "train.log").read_text()[len(logs["micro-ce-s1"]):]
    assert "Loaded checkpoint" in resumed and "(epoch 1 @ 4 updates)" in resumed
    assert "done training" in resumed

    # --evaluate-only evaluates what is trained and not yet evaluated, and trains nothing
    for path in (tmp_path / "runs" / "micro-tie_kd-s1").glob("eval-*"):
        path.unlink()
    fourth = run_grid(tmp_path, data, toy_data.parent / "raw" / "test.tgt", "--evaluate-only")
    assert "micro-tie_kd-s1: evaluate" in fourth and "micro-ce-s1: evaluate" not in fourth
    assert not re.search(r": (train|resume|trained)$", fourth, re.M)
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert len(grid["invocations"]) == 4 and all(i["minutes"] is not None for i in grid["invocations"])
    head = subprocess.run(["git", "-C", utils.REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert {i["commit"] for i in grid["invocations"]} == {head.stdout.strip() or "?"}


def test_patience_is_counted_over_restarts():
    """fairseq's own --patience counter restarts at 0 in a resumed process; the runner reads the
    whole log. A validation repeated after a kill (before its checkpoint) counts once."""
    sys.path.insert(0, os.path.dirname(RUNNER))
    import run_grid

    def valid(update, loss):
        return f"epoch 001 | valid on 'valid' subset | loss {loss} | nll_loss 1 | ppl 2 | num_updates {update} | best_loss 1\n"

    log = valid(10, 5.0) + valid(20, 4.0) + valid(30, 4.1) + run_grid.START_MARK + "2026-11-30 10:00:00\n"
    log += valid(30, 4.1) + valid(40, 4.0)  # resumed from update 20's checkpoint; 40 ties: no better
    assert run_grid.validations(log) == [(10, 5.0), (20, 4.0), (30, 4.1), (40, 4.0)]
    assert run_grid.patience_stop(log, 2) == 40 and run_grid.patience_stop(log, 3) is None
    assert run_grid.patience_stop(log, 0) is None and run_grid.best_validation(log) == (4.0, 20)


def test_patience_stop_and_equal_compute_runs(toy_data, tmp_path):
    """Students stop on --patience (a learning rate of ~0 never improves validation); the
    equal-compute CE run gets the updates that the TIE-KD run's CPU time buys at CE's rate."""
    data = tmp_path / "bin"
    utils.preprocess(toy_data.parent / "raw", data, "--joined-dictionary")
    proc = subprocess.run(
        [sys.executable, RUNNER, "--work", tmp_path, "--data", data, "--ref", toy_data.parent / "raw" / "test.tgt",
         "--src", "src", "--tgt", "tgt", "--post-process", "none", "--teacher-arch", "tie_kd_transformer_micro",
         "--teacher-updates", "4", "--updates", "20", "--patience", "1", "--lr", "1e-9", "--sizes", "micro:1",
         "--methods", "ce,tie_kd", "--eqtime", "micro:1:ce_eqtime", "--save-every", "2", "--average-last", "2",
         "--max-tokens", "1500", "--jobs", "1"],
        capture_output=True, text=True, env=utils.CHILD_ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = {name: json.loads((tmp_path / "runs" / f"micro-{name}-s1" / "train.json").read_text())
              for name in ("ce", "tie_kd", "ce_eqtime")}
    for name in ("ce", "tie_kd"):  # validations at 2 and 4: the second is no better
        assert record[name]["stopped"] == "patience" and record[name]["updates"] == 4
        assert record[name]["best_valid_update"] == 2 and record[name]["cpu_seconds"] > 0
    eq = record["ce_eqtime"]
    per_update = record["ce"]["cpu_seconds"] / 4
    assert eq["cpu_budget_seconds"] == record["tie_kd"]["cpu_seconds"]
    assert eq["updates"] == max(1, round(record["tie_kd"]["cpu_seconds"] / per_update / 2)) * 2
    assert eq["stopped"] == "max_update" and eq["patience"] == 0
    assert "--patience" not in eq["command"] and "--max-update " + str(eq["updates"]) in eq["command"]
