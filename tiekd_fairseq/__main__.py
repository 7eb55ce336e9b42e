"""``python -m tiekd_fairseq``: print the plugin's fairseq-train options with their help.

fairseq 0.12's ``fairseq-train --help`` exits before it adds any task or criterion options
(built-in ones such as ``--label-smoothing`` included), so ours are listed here, generated
from the same dataclasses that fairseq reads.
"""
import argparse

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.tasks.translation import TranslationConfig

from .criterion import TieKDCriterionConfig
from .task import TranslationTieKDConfig


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` where it says something: not for flags (off unless given),
    empty or unset defaults, or help that already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or default is None or default == "" or default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-train ... --user-dir tiekd_fairseq",
        description="Options added by tiekd_fairseq (use with fairseq-train).",
        formatter_class=DefaultsHelpFormatter,
    )
    task = parser.add_argument_group("--task translation_tie_kd (plus all of --task translation's)")
    for name, field in TranslationTieKDConfig.__dataclass_fields__.items():
        if name in TranslationConfig.__dataclass_fields__ or not field.metadata.get("help"):
            continue  # translation's own, or read from another part of fairseq's config
        task.add_argument("--" + name.replace("_", "-"), default=field.default,
                          action="store_true" if field.type is bool else None,
                          help=field.metadata.get("help"))
    gen_parser_from_dataclass(parser.add_argument_group("--criterion tie_kd"), TieKDCriterionConfig())
    return parser


if __name__ == "__main__":
    build_parser().print_help()
