#!/usr/bin/env python3
"""Train one joint SentencePiece model on the training text and encode every split.

usage: sentencepiece_prep.py RAW_DIR OUT_DIR --src en --tgt de [--vocab-size 8000]
RAW_DIR holds {train,valid,test}.{src,tgt} plain text (and optionally pool.{src}, unlabeled
source text); OUT_DIR gets spm.model and the encoded {split}.{lang} files, ready for
fairseq-preprocess. Skips work already done.
"""
import argparse
import os

import sentencepiece as spm


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--src", default="en")
    ap.add_argument("--tgt", default="de")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    prefix = os.path.join(args.out_dir, "spm")
    if not os.path.exists(prefix + ".model"):
        spm.SentencePieceTrainer.train(
            input=[os.path.join(args.raw_dir, f"train.{l}") for l in (args.src, args.tgt)],
            model_prefix=prefix, vocab_size=args.vocab_size, model_type=args.model_type,
            character_coverage=1.0, input_sentence_size=2_000_000, shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1, minloglevel=2, seed_sentencepiece_size=200_000,
        )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    files = [(split, lang) for split in ("train", "valid", "test") for lang in (args.src, args.tgt)]
    for split, lang in files + [("pool", args.src)]:
        src, dst = os.path.join(args.raw_dir, f"{split}.{lang}"), os.path.join(args.out_dir, f"{split}.{lang}")
        if os.path.exists(dst) or (split == "pool" and not os.path.exists(src)):
            continue
        with open(src, encoding="utf-8") as f:
            lines = [l.rstrip("\n") for l in f]
        with open(dst + ".tmp", "w", encoding="utf-8") as f:
            for pieces in sp.encode(lines, out_type=str):
                f.write(" ".join(pieces) + "\n")
        os.replace(dst + ".tmp", dst)
    print(f"sentencepiece: {prefix}.model ({sp.get_piece_size()} pieces), encoded splits in {args.out_dir}")


if __name__ == "__main__":
    main()
