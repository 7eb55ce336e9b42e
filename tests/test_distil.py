"""examples/distil.sh on a toy corpus in plain text with unlabeled source text (mono.src):
SentencePiece, binaries, a teacher, a CE and a TIE-KD-with-pool student learning from the
teacher's averaged checkpoint, the tiekd-eval table; a second run does nothing again."""
import filecmp
import json
import os
import re
import subprocess

import utils

SCRIPT = os.path.join(utils.REPO, "examples", "distil.sh")
BUDGET = {"VOCAB": "32", "TEACHER_ARCH": "tie_kd_transformer_micro", "TEACHER_UPDATES": "20",
          "STUDENT_SIZE": "nano", "STUDENT_UPDATES": "10", "METHODS": "ce", "SAVE_EVERY": "5",
          "AVERAGE_LAST": "2", "MAX_TOKENS": "1500", "POOL_PER_EPOCH": "50", "JOBS": "2"}


def distil(raw, work, check=True):
    env = dict(utils.CHILD_ENV, TIEKD_PYTHON=os.path.join(utils.BIN, "python"), **BUDGET)
    proc = subprocess.run(["bash", SCRIPT, str(raw), "src", "tgt", str(work)], capture_output=True, text=True,
                          env=env, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_distil_sh_from_text_to_table_and_resume(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    utils.write_toy_corpus(raw, sizes=(("train", 600), ("valid", 30), ("test", 20)))
    with open(raw / "mono.src", "w") as f:
        f.writelines(s + "\n" for s, _ in utils.toy_pairs(100, seed=7))
    first = distil(raw, work)

    # data: one SentencePiece model, the pool binarized with the data's source dictionary
    assert (work / "spm" / "spm.model").exists() and filecmp.cmp(raw / "mono.src", work / "raw" / "pool.src")
    assert filecmp.cmp(work / "pool" / "dict.src.txt", work / "bin" / "dict.src.txt", shallow=False)
    # the teacher's last 2 checkpoints averaged, and the students learnt from that average
    teacher = json.loads(next((work / "teacher").glob("eval-*.json")).read_text())
    assert len(teacher["checkpoints"]) == 2 and teacher["num_updates"] == 20
    pool_run = work / "runs" / "nano-tie_kd_pool-s1"
    command = json.loads((pool_run / "train.json").read_text())["command"]
    assert f"--teacher-path {work / 'teacher' / 'average_last2.pt'}" in command
    assert f"--unlabeled-data {work / 'pool'}" in command and "--share-all-embeddings" in command
    # checkpoints for the average: --save-interval-updates 5 --keep-interval-updates 2
    assert "--save-interval-updates 5" in command and "--keep-interval-updates 2" in command
    for name in ("nano-ce-s1", "nano-tie_kd_pool-s1"):
        record = json.loads(next((work / "runs" / name).glob("eval-test-avg2-*.json")).read_text())
        assert len(record["checkpoints"]) == 2 and record["num_updates"] == 10 and record["n"] == 20
        hyps = (work / "runs" / name / "eval-test-avg2-beam4-lenpen0.6.hyp").read_text().splitlines()
        assert len(hyps) == 20 and not any("\u2581" in h for h in hyps)  # SentencePiece undone

    # the table: every system, the pool student labelled as such
    table = (work / "results.md").read_text()
    assert table in first.stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"teacher", "ce", "tie_kd_pool"}
    assert "tie_kd (N=3, kl+top1+topk) + pool" in rows["tie_kd_pool"]
    assert "label_smoothed_cross_entropy" in rows["ce"] and "| 10 |" in rows["ce"]

    # resumable: a second run trains and evaluates nothing, and prints the same table
    second = distil(raw, work)
    assert "teacher: trained" in second.stdout and "nano-ce-s1: trained" in second.stdout
    assert not re.search(r": (train|resume|evaluate)$", second.stdout, re.M)
    assert (work / "results.md").read_text() == table


def test_distil_sh_checks_its_input_first(tmp_path):
    raw = tmp_path / "raw"
    utils.write_toy_corpus(raw, sizes=(("train", 20), ("valid", 5)))
    proc = distil(raw, tmp_path / "work", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"distil.sh: missing {raw}/test.src (need {{train,valid,test}}.{{src,tgt}})"
    with open(raw / "test.src", "w") as f, open(raw / "test.tgt", "w") as g:
        f.write("s1 s2\ns3\n")
        g.write("t1 t2\n")
    proc = distil(raw, tmp_path / "work", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == f"distil.sh: {raw}/test.src has 2 lines, test.tgt has 1"


def test_sentencepiece_prep_keeps_pairs_aligned_on_messy_text(tmp_path):
    """CRLF endings, a stray carriage return inside a line, a last line without its newline and
    a byte that is not UTF-8: every split keeps one encoded line per "\n"-ended raw line (what
    `wc -l` and the references count), with no "\r" left for fairseq-preprocess to split on."""
    raw, out = tmp_path / "raw", tmp_path / "spm"
    utils.write_toy_corpus(raw, sizes=(("train", 200), ("valid", 5), ("test", 5)))
    train = (raw / "train.src").read_bytes().replace(b"\n", b"\r\n")
    (raw / "train.src").write_bytes(train.replace(b"\r\n", b" a\rb \xff\r\n", 1).rstrip(b"\r\n"))
    script = os.path.join(utils.REPO, "examples", "data", "sentencepiece_prep.py")
    prep = [os.path.join(utils.BIN, "python"), script, raw, out, "--src", "src", "--tgt", "tgt", "--vocab-size"]
    proc = subprocess.run(prep + ["400"], capture_output=True, text=True)  # more than the text allows
    assert proc.returncode == 1 and proc.stderr.startswith("sentencepiece_prep: SentencePiece could not train on ")
    assert "Vocabulary size too high (400)" in proc.stderr and "Traceback" not in proc.stderr
    subprocess.run(prep + ["30"], check=True, capture_output=True)
    for split in ("train", "valid", "test"):
        expected = (raw / f"{split}.tgt").read_bytes().count(b"\n")
        for lang in ("src", "tgt"):
            encoded = (out / f"{split}.{lang}").read_bytes()
            assert encoded.count(b"\n") == expected and b"\r" not in encoded, (split, lang)

    (raw / "test.tgt").write_text("only one line\n")  # misaligned sides: a one-line error
    for f in out.glob("test.*"):
        f.unlink()
    proc = subprocess.run(prep + ["30"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "sentencepiece_prep: test.src has 5 lines, test.tgt has 1: the two sides of a split must be line-aligned")
