#!/usr/bin/env python3
"""Build an English->X parallel corpus from the LibreOffice offline help.

Data source: the Debian packages ``libreoffice-help-en-us`` and
``libreoffice-help-<tgt>`` (fetched with ``apt-get download``). Each package
holds the same set of HTML help pages; block elements (p, h1..h6) carry ``id``
attributes that are shared across languages, so paragraphs are paired by
(relative file path, id). The translations are human-made.

Licence: the LibreOffice help is distributed under the Mozilla Public Licence
2.0 (MPL-2.0). Keep that notice with any corpus you redistribute.

usage: python examples/data/prepare_lohelp.py OUT_DIR [--tgt de] [--pool-percent 20]
                                               [--max-train N] [--force]

Writes OUT_DIR/{train,valid,test}.{en,<tgt>}, one segment per line, and OUT_DIR/pool.en:
the English side only of other documents, an unlabeled source pool for distillation
(their translations are dropped). Splits are document-disjoint: crc32(help file path)
% 100 -> 0..1 test, 2..3 valid, 4..4+P-1 pool, else train. Stdlib only; needs apt-get
and dpkg-deb (Debian/Ubuntu).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from html.parser import HTMLParser

SRC = "en"
SPLITS = ("train", "valid", "test")
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
MIN_WORDS, MAX_WORDS, MAX_RATIO = 3, 60, 2.0


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def fetch_debs(pkgs, deb_dir):
    """apt-get download each package into deb_dir unless its .deb is already there."""
    os.makedirs(deb_dir, exist_ok=True)
    updated = False
    for pkg in pkgs:
        if glob.glob(os.path.join(deb_dir, f"{pkg}_*.deb")):
            continue
        if shutil.which("apt-get") is None:
            sys.exit(f"error: apt-get not found; put {pkg}_*.deb into {deb_dir} by hand")
        print(f"downloading {pkg} ...", flush=True)
        res = run(["apt-get", "download", pkg], cwd=deb_dir)
        if res.returncode != 0 and not updated:
            # Usually "Unable to locate package": the package lists are missing.
            print("apt-get download failed; running apt-get update once", flush=True)
            run(["apt-get", "update", "-qq"])
            updated = True
            res = run(["apt-get", "download", pkg], cwd=deb_dir)
        if res.returncode != 0:
            sys.exit(f"error: apt-get download {pkg} failed:\n{res.stderr.strip()}")


def extract(pkg, deb_dir, x_dir):
    """dpkg-deb -x the package into x_dir/pkg (once; a marker file records completion)."""
    dest = os.path.join(x_dir, pkg)
    marker = os.path.join(dest, ".extracted")
    if not os.path.exists(marker):
        deb = sorted(glob.glob(os.path.join(deb_dir, f"{pkg}_*.deb")))[-1]
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
        open(marker, "w").close()
    return dest


def help_root(pkg_dir, lang):
    """The language folder under usr/share/libreoffice/help (case-insensitive: pt-br -> pt-BR)."""
    base = os.path.join(pkg_dir, "usr", "share", "libreoffice", "help")
    for name in os.listdir(base):
        if name.lower() == lang.lower() and os.path.isdir(os.path.join(base, name)):
            return os.path.join(base, name)
    sys.exit(f"error: no help/{lang} folder in {pkg_dir}")


class ParagraphParser(HTMLParser):
    """Collects {id: text} for p/h1..h6 elements that carry an id (first occurrence wins)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paras, self.current, self.parts, self.skip = {}, None, [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in BLOCKS:
            self.flush()
            self.current = dict(attrs).get("id")
        elif tag == "br":
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in BLOCKS:
            self.flush()

    def handle_data(self, data):
        if self.current and not self.skip:
            self.parts.append(data)

    def flush(self):
        text = " ".join("".join(self.parts).split())
        if self.current and text:
            self.paras.setdefault(self.current, text)
        self.current, self.parts = None, []


def paragraphs(path):
    parser = ParagraphParser()
    with open(path, encoding="utf-8", errors="replace") as f:
        parser.feed(f.read())
    parser.close()
    parser.flush()
    return parser.paras


def aligned_pairs(src_root, tgt_root):
    """Yield (relative path, src text, tgt text) in deterministic (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(src_root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".html"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src_root)
            tgt_path = os.path.join(tgt_root, rel)
            if not os.path.isfile(tgt_path):
                continue
            tgt_paras = paragraphs(tgt_path)
            for pid, src in paragraphs(os.path.join(src_root, rel)).items():
                if pid in tgt_paras:
                    yield rel, src, tgt_paras[pid]


def wordy(text):
    """3..60 words, and at least half of the tokens contain two or more letters."""
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    return sum(bool(re.search(r"[^\W\d_]{2,}", w)) for w in words) >= 0.5 * len(words)


def keep(src, tgt):
    if src == tgt or "\t" in src + tgt or not (wordy(src) and wordy(tgt)):
        return False
    ns, nt = len(src.split()), len(tgt.split())
    return max(ns, nt) / min(ns, nt) <= MAX_RATIO


def norm(text):
    return re.sub(r"\W+", " ", text.lower()).strip()


def split_of(rel_path, pool_percent):
    h = zlib.crc32(rel_path.encode("utf-8")) % 100
    return "test" if h < 2 else "valid" if h < 4 else "pool" if h < 4 + pool_percent else "train"


def outputs(out_dir, tgt):
    """{split: [(file, side)]}: side 0 is the source, 1 the target."""
    files = {sp: [(os.path.join(out_dir, f"{sp}.{SRC}"), 0), (os.path.join(out_dir, f"{sp}.{tgt}"), 1)]
             for sp in SPLITS}
    files["pool"] = [(os.path.join(out_dir, f"pool.{SRC}"), 0)]
    return files


def print_counts(files):
    for sp, paths in files.items():
        with open(paths[0][0], encoding="utf-8") as f:
            print(f"{sp:5s} {sum(1 for _ in f):7d} {'pairs' if len(paths) == 2 else 'source sentences'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tgt", default="de", help="target language code (default: de)")
    ap.add_argument("--pool-percent", type=int, default=20,
                    help="percent of documents kept as an unlabeled English pool (default: 20)")
    ap.add_argument("--max-train", type=int, default=None, help="keep only the first N train pairs")
    ap.add_argument("--force", action="store_true", help="rebuild even if outputs exist")
    args = ap.parse_args()

    files = outputs(args.out_dir, args.tgt)
    if not args.force and all(os.path.exists(p) for paths in files.values() for p, _ in paths):
        print(f"{args.out_dir}: outputs already present (use --force to rebuild)")
        print_counts(files)
        return

    t0 = time.time()
    pkgs = ["libreoffice-help-en-us", f"libreoffice-help-{args.tgt.lower()}"]
    deb_dir, x_dir = os.path.join(args.out_dir, "debs"), os.path.join(args.out_dir, "x")
    fetch_debs(pkgs, deb_dir)
    src_root = help_root(extract(pkgs[0], deb_dir, x_dir), "en-US")
    tgt_root = help_root(extract(pkgs[1], deb_dir, x_dir), args.tgt)

    data = {sp: [] for sp in files}
    seen_src, seen_tgt = set(), set()
    raw = 0
    for rel, src, tgt in aligned_pairs(src_root, tgt_root):
        raw += 1
        if not keep(src, tgt):
            continue
        ks, kt = norm(src), norm(tgt)
        if ks in seen_src or kt in seen_tgt:
            continue
        seen_src.add(ks)
        seen_tgt.add(kt)
        data[split_of(rel, args.pool_percent)].append((src, tgt))
    if args.max_train is not None:
        data["train"] = data["train"][: args.max_train]

    for sp, paths in files.items():
        for path, side in paths:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(pair[side] + "\n" for pair in data[sp])
            os.replace(path + ".tmp", path)
    print(f"{raw} aligned paragraphs -> {sum(map(len, data.values()))} kept "
          f"({time.time() - t0:.1f}s)")
    print_counts(files)


if __name__ == "__main__":
    main()
