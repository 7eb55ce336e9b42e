#!/usr/bin/env python3
"""Score the demo's systems with sacreBLEU and print a markdown results table.

usage: report.py REF_FILE NAME=RUN_DIR [NAME=RUN_DIR ...]
Each RUN_DIR holds hyp.txt (detokenized hypotheses, one per line, in test-set order),
checkpoint_last.pt, and train_seconds / decode_seconds written by the demo script.
"""
import os
import sys

import sacrebleu
import torch

import tiekd_fairseq  # noqa: F401  (lets torch.load read fairseq checkpoints safely)


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def seconds(run_dir, name):
    path = os.path.join(run_dir, name)
    return float(open(path).read()) if os.path.exists(path) else float("nan")


def checkpoint_facts(run_dir):
    state = torch.load(os.path.join(run_dir, "checkpoint_last.pt"), map_location="cpu", weights_only=True)
    # tied weights (--share-all-embeddings) are one tensor under several keys: count once
    unique = {v.untyped_storage().data_ptr(): v for k, v in state["model"].items()
              if not k.endswith("_float_tensor")}
    params = sum(v.numel() for v in unique.values())
    updates = state["optimizer_history"][-1]["num_updates"]
    cfg = state["cfg"]
    model_cfg = vars(cfg["model"]) if not isinstance(cfg["model"], dict) else cfg["model"]  # Namespace for legacy archs
    return params, updates, model_cfg.get("arch") or model_cfg["_name"], cfg["criterion"]["_name"]


def main():
    refs = read(sys.argv[1])
    rows, sig = [], None
    for spec in sys.argv[2:]:
        name, run_dir = spec.split("=", 1)
        hyps = read(os.path.join(run_dir, "hyp.txt"))
        assert len(hyps) == len(refs), f"{name}: {len(hyps)} hypotheses for {len(refs)} references"
        bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
        b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
        sig = (bleu.get_signature(), chrf.get_signature())
        params, updates, arch, criterion = checkpoint_facts(run_dir)
        rows.append((name, arch, criterion, f"{params / 1e6:.2f}M", updates, f"{b.score:.2f}",
                     f"{c.score:.2f}", f"{seconds(run_dir, 'train_seconds') / 60:.1f}",
                     f"{seconds(run_dir, 'decode_seconds'):.0f}"))
    head = ("system", "arch", "criterion", "params", "updates", "BLEU", "chrF", "train min", "decode s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    lines += ["", f"sacreBLEU: BLEU `{sig[0]}`, chrF `{sig[1]}`; test set: {len(refs)} sentences."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
