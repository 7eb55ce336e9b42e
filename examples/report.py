#!/usr/bin/env python3
"""Markdown tables of runs evaluated by ``tiekd-eval``: the results table, and the deploy
table when some run was also evaluated with ``--engine ctranslate2``.

usage: report.py NAME=RUN_DIR [NAME=RUN_DIR ...]

Each RUN_DIR is a fairseq-train save dir holding tiekd-eval's records: ``eval-*.json``
(fairseq-generate; the newest is used) and ``ct2-QUANTIZATION-*.json`` (CTranslate2; the
newest of each quantization). Training minutes come from ``train_seconds`` (examples/run_demo.sh)
or ``train.json`` (examples/run_grid.py). The method column is read from the evaluated
checkpoint's stored config.
"""
import glob
import json
import os
import sys

import torch

import tiekd_fairseq  # noqa: F401  (lets torch.load read fairseq checkpoints safely)


def newest(paths):
    return max(paths, key=os.path.getmtime) if paths else None


def records(run_dir):
    """(the newest fairseq record, {quantization: the newest CTranslate2 record of the same
    checkpoints, subset, beam and length penalty})"""
    def load(path):
        with open(path) as f:
            return json.load(f)

    fairseq = newest(glob.glob(os.path.join(run_dir, "eval-*.json")))
    if fairseq is None:
        return None, {}
    fairseq = load(fairseq)
    same = ("checkpoints", "gen_subset", "beam", "lenpen")
    ct2 = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "ct2-*.json")), key=os.path.getmtime):
        record = load(path)
        if all(record.get(k) == fairseq.get(k) for k in same):
            ct2[record["quantization"]] = record
    return fairseq, ct2


def train_minutes(run_dir):
    for name, read in (("train_seconds", lambda f: float(f.read())), ("train.json", lambda f: json.load(f)["train_seconds"])):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                return read(f) / 60
    return None


def method(record):
    """What the run trained with, from its checkpoint's stored config: the criterion, with the
    tie_kd settings that tell TIE-KD from word-KD, and the pool or seq-KD where used."""
    path = os.path.join(record["checkpoint_dir"], record.get("evaluated_checkpoint") or "checkpoint_last.pt")
    if not os.path.exists(path):
        return record.get("criterion") or "?"
    cfg = torch.load(path, map_location="cpu", weights_only=True)["cfg"]
    criterion, task = cfg.get("criterion") or {}, cfg.get("task") or {}
    name = criterion.get("_name", "?")
    if name == "tie_kd":
        terms = [t for t in ("kl", "top1", "topk") if not criterion.get(f"kd_no_{t}")]
        name += f" (N={criterion.get('kd_iters')}, {'+'.join(terms)})"
    if task.get("seq_kd"):
        name += " + seq-KD"
    if task.get("unlabeled_data"):
        name += " + pool"
    return name


def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "—"


def main():
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__.split("\n\n")[1])
    runs = [spec.split("=", 1) for spec in sys.argv[1:]]
    rows, deploy, signature, n = [], [], None, None
    for name, run_dir in runs:
        fairseq, ct2 = records(run_dir)
        if fairseq is None:
            sys.exit(f"report.py: {run_dir}: no tiekd-eval record (eval-*.json)")
        signature = (fairseq["bleu_signature"], fairseq["chrf_signature"])
        n, beam, lenpen = fairseq["n"], fairseq["beam"], fairseq["lenpen"]
        rows.append((name, fairseq["arch"], method(fairseq), f"{fairseq['params'] / 1e6:.2f}M",
                     fairseq["num_updates"], f"{fairseq['bleu']:.2f}", f"{fairseq['chrf']:.2f}",
                     fmt(train_minutes(run_dir), ".1f"), f"{fairseq['decode_seconds']:.0f}"))
        for engine, record in [("fairseq", fairseq)] + [(f"CTranslate2 {q}", r) for q, r in sorted(ct2.items())]:
            deploy.append((name, engine, f"{record['bleu']:.2f}", f"{record['chrf']:.2f}",
                           fmt(record.get("sentences_per_second"), ".0f"),
                           fmt(record.get("model_bytes", 0) / 2**20, ".2f"), record.get("threads", "—")))
    out = table(("system", "arch", "method", "params", "updates", "BLEU", "chrF", "train min", "decode s"), rows)
    out += ["", f"sacreBLEU: BLEU `{signature[0]}`, chrF `{signature[1]}`; test set: {n} sentences, "
            f"beam {beam}, lenpen {lenpen:g}, translated by fairseq-generate (tiekd-eval)."]
    if len(deploy) > len(rows):
        out += ["", "Deploy: the same checkpoints translated by fairseq-generate and by CTranslate2 "
                "(`tiekd-eval --engine ctranslate2 --quantization Q`; float32 gives fairseq's translations):", ""]
        out += table(("system", "engine", "BLEU", "chrF", "sentences/s", "model MiB", "threads"), deploy)
        out += ["", "sentences/s: translation time only (model loading excluded), the whole test set in batches "
                "of up to 4096 source tokens; model MiB: fairseq = its weights as torch.save writes them (no "
                "optimizer state), CTranslate2 = the converted model directory."]
    print("\n".join(out))


def table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(map(str, r)) + " |" for r in rows]


if __name__ == "__main__":
    main()
