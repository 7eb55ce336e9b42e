"""The benchmark scripts run (smoke sizes), so they cannot rot. Their timing targets live in
their own output and docs/performance.md, not here."""
import json
import os
import subprocess
import sys

import pytest

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
    assert set(r) == {"ce", "tie_kd_N1", "tie_kd_N3", "tie_kd_N3_fused", "tie_kd_N3_fused_ckpt"}
    assert all(v["median_s"] > 0 and v["peak_extra_bytes"] > 0 for v in r.values())
    # the same weights, batches and seed: through fairseq's Trainer (Adam updates included),
    # the fused and checkpointed steps log the unfused step's losses (to the log's 3 decimals)
    for name in ("tie_kd_N3_fused", "tie_kd_N3_fused_ckpt"):
        assert r[name]["losses"] == pytest.approx(r["tie_kd_N3"]["losses"], abs=1.01e-3), name


def test_gpu_check_smoke(tmp_path):
    """benchmarks/gpu_check.sh's CPU path (toy sizes): every check passes."""
    out = tmp_path / "check.json"
    proc = subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh"), "--smoke", "--workdir", tmp_path / "work",
                           "--json", out], capture_output=True, text=True, env={**utils.CHILD_ENV,
                                                                                 "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    names = [row[0] for row in r["rows"]]
    assert [n for n in names if n.startswith("loss")] == [f"loss {kind} {dtype}" for dtype in ("float32", "bfloat16",
                                                                                            "float16")
                                                          for kind in ("unfused", "fused")]
    assert "step tiny fp32 tie_kd_N3_fused" in names and "train 3 updates tie_kd N=3 fused+ckpt" in names
    assert all(ok for _, ok, _ in r["rows"])
    assert "tiekd GPU check" in proc.stdout and "figures" in proc.stdout


def test_decode_benchmark_smoke(toy_data, teacher_checkpoint, tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run([sys.executable, os.path.join(BENCH, "bench_decode.py"), teacher_checkpoint, toy_data,
                    "--json", out], check=True, capture_output=True, text=True)
    r = json.loads(out.read_text())
    assert r["sentences"] == 40 and r["identical_translations"] == 40
    assert r["ours_sent_per_s"] > 0 and r["fairseq_generate_sent_per_s"] > 0


def test_pseudo_memory_benchmark_smoke():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_pseudo_memory.py"), "--pairs", "2000",
                           "--vocab", "1000"], check=True, capture_output=True, text=True)
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if "| 2,000 |" in line]
    assert rows == ["python_tensors", "fairseq_binaries"], proc.stdout
