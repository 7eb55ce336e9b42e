"""The benchmark scripts run (smoke sizes), so they cannot rot. Their timing targets live in
their own output and docs/performance.md, not here."""
import json
import os
import subprocess
import sys

import utils

BENCH = os.path.join(utils.REPO, "benchmarks")


def test_loss_benchmark_smoke(tmp_path):
    out = tmp_path / "loss.json"
    subprocess.run([sys.executable, os.path.join(BENCH, "bench_loss.py"), "--smoke", "--json", out],
                   check=True, capture_output=True, text=True)
    r = json.loads(out.read_text())
    assert r["loss_rel_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-5
    assert r["naive_ms"] > 0 and r["lean_ms"] > 0 and r["naive_peak_extra_mib"] > 0


def test_train_step_benchmark_smoke(toy_data, tmp_path):
    out = tmp_path / "step.json"
    subprocess.run([sys.executable, os.path.join(BENCH, "bench_train_step.py"), toy_data,
                    "--student-dim", "32", "--layers", "1", "--steps", "1", "--warmup", "1",
                    "--workdir", tmp_path, "--json", out], check=True, capture_output=True, text=True)
    r = json.loads(out.read_text())
    assert set(r) == {"ce", "tie_kd_N1", "tie_kd_N3"}
    assert all(v["median_s"] > 0 for v in r.values())


def test_decode_benchmark_smoke(toy_data, teacher_checkpoint, tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run([sys.executable, os.path.join(BENCH, "bench_decode.py"), teacher_checkpoint, toy_data,
                    "--json", out], check=True, capture_output=True, text=True)
    r = json.loads(out.read_text())
    assert r["sentences"] == 40 and r["identical_translations"] == 40
    assert r["ours_sent_per_s"] > 0 and r["fairseq_generate_sent_per_s"] > 0
