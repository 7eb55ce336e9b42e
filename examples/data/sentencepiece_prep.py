#!/usr/bin/env python3
"""Train one joint SentencePiece model on the training text and encode every split.

usage: sentencepiece_prep.py RAW_DIR OUT_DIR --src en --tgt de [--vocab-size 8000]
RAW_DIR holds {train,valid,test}.{src,tgt} plain text (and optionally pool.{src}, unlabeled
source text); OUT_DIR gets spm.model and the encoded {split}.{lang} files, ready for
fairseq-preprocess. Skips work already done.
"""
import argparse
import os
import sys

import sentencepiece as spm


def read_lines(path):
    """The lines of a text file as ``wc -l`` counts them: ended by "\n" only, the last one with
    or without it. A CRLF ending loses its "\r", and a stray "\r" inside a line becomes a space
    (Python's and fairseq-preprocess's universal newlines would split the line there and shift
    every later pair); bytes that are not UTF-8 become U+FFFD instead of stopping the run."""
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        return [line.rstrip("\n").rstrip("\r").replace("\r", " ") for line in f]


def train_model(args, prefix):
    spm.SentencePieceTrainer.train(
        input=[os.path.join(args.raw_dir, f"train.{l}") for l in (args.src, args.tgt)],
        model_prefix=prefix, vocab_size=args.vocab_size, model_type=args.model_type,
        character_coverage=1.0, input_sentence_size=2_000_000, shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1, minloglevel=2, seed_sentencepiece_size=200_000,
    )


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
    for split in ("train", "valid", "test"):  # line i of one side translates line i of the other
        counts = [len(read_lines(os.path.join(args.raw_dir, f"{split}.{lang}"))) for lang in (args.src, args.tgt)]
        if counts[0] != counts[1]:
            sys.exit(f"sentencepiece_prep: {split}.{args.src} has {counts[0]:,} lines, {split}.{args.tgt} "
                     f"has {counts[1]:,}: the two sides of a split must be line-aligned")
    prefix = os.path.join(args.out_dir, "spm")
    if not os.path.exists(prefix + ".model"):
        try:
            train_model(args, prefix)
        except RuntimeError as e:  # e.g. "Vocabulary size too high (40). Please set it to a value <= 35."
            sys.exit(f"sentencepiece_prep: SentencePiece could not train on {args.raw_dir}/train.*: "
                     f"{str(e).split('] ')[-1]}")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    files = [(split, lang) for split in ("train", "valid", "test") for lang in (args.src, args.tgt)]
    for split, lang in files + [("pool", args.src)]:
        src, dst = os.path.join(args.raw_dir, f"{split}.{lang}"), os.path.join(args.out_dir, f"{split}.{lang}")
        if os.path.exists(dst) or (split == "pool" and not os.path.exists(src)):
            continue
        lines = read_lines(src)
        with open(dst + ".tmp", "w", encoding="utf-8") as f:
            for pieces in sp.encode(lines, out_type=str):
                f.write(" ".join(pieces) + "\n")
        os.replace(dst + ".tmp", dst)
    print(f"sentencepiece: {prefix}.model ({sp.get_piece_size()} pieces), encoded splits in {args.out_dir}")


if __name__ == "__main__":
    main()
