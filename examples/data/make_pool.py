#!/usr/bin/env python3
"""Unlabeled source text for a pool: sentences from other files that the parallel data lacks.

usage: make_pool.py OUT --exclude FILE [FILE ...] --from FILE [FILE ...]

Writes to OUT every line of the --from files (in order) whose normalised form (lower case,
non-word runs collapsed) is in none of the --exclude files (say, all splits of the parallel
source side) and has not been written already. Use it to hold a pool apart from the test set.
"""
import argparse
import os
import re


def normalise(line: str) -> str:
    return re.sub(r"\W+", " ", line.lower()).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--exclude", nargs="+", required=True)
    ap.add_argument("--from", dest="sources", nargs="+", required=True)
    args = ap.parse_args()
    seen = set()
    for path in args.exclude:
        with open(path, encoding="utf-8") as f:
            seen.update(normalise(line) for line in f)
    kept = 0
    with open(args.out + ".tmp", "w", encoding="utf-8") as out:
        for path in args.sources:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    key = normalise(line)
                    if key and key not in seen:
                        seen.add(key)
                        out.write(line.rstrip("\n") + "\n")
                        kept += 1
    os.replace(args.out + ".tmp", args.out)
    print(f"make_pool: {kept:,} sentences -> {args.out}")


if __name__ == "__main__":
    main()
