from setuptools import setup

setup(
    name="tiekd-fairseq",
    version="0.1.0",
    description="TIE-KD (Top-1 Information Enhanced Knowledge Distillation) for fairseq NMT",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["tiekd_fairseq"],
    python_requires=">=3.8",
    install_requires=[
        # Stock fairseq 0.12.2 does not import on Python >= 3.11; ve-fairseq is the same
        # code base with the 3.11 fixes, prebuilt (see docs/install.md, "Which fairseq").
        'fairseq>=0.12.2; python_version < "3.11"',
        've-fairseq==0.12.3; python_version >= "3.11"',
        # fairseq 0.12.2's encoder fails under torch 2.x (docs/install.md)
        'torch>=1.10,<2; python_version < "3.11"',
        'torch>=2; python_version >= "3.11"',
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.97",
    ],
    extras_require={
        # CTranslate2 inference of trained models (tiekd-export, tiekd-eval --engine ctranslate2);
        # never needed to train. The tests exercise it, so they ask for it too.
        "deploy": ["ctranslate2>=4.0"],
        "test": ["pytest>=7", "pytest-xdist>=3", "ctranslate2>=4.0"],
        "examples": ["matplotlib>=3.5"],
    },
    entry_points={"console_scripts": [
        "tiekd-eval = tiekd_fairseq.evaluate:main",
        "tiekd-export = tiekd_fairseq.export:main",
    ]},
)
