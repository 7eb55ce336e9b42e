"""Transformer architectures for TIE-KD teachers and students.

Named configurations of fairseq's ``transformer`` model, so that a student and a teacher
are ordinary fairseq checkpoints (loadable with ``--user-dir tiekd_fairseq``):

- ``tie_kd_transformer_base``: Transformer-base (Vaswani et al.), = ``transformer_wmt_en_de``;
- ``tie_kd_transformer_big``: Transformer-big, = ``transformer_vaswani_wmt_en_de_big``;
- ``tie_kd_transformer_small`` (3+3 layers, 256 dim), ``tie_kd_transformer_tiny`` (2+2, 128)
  and ``tie_kd_transformer_micro`` (1+1, 96): sizes that train usefully on a few CPU cores.
"""

from fairseq.models import register_model_architecture
from fairseq.models.transformer import (
    base_architecture,
    transformer_vaswani_wmt_en_de_big,
    transformer_wmt_en_de,
)


@register_model_architecture("transformer", "tie_kd_transformer_base")
def tie_kd_transformer_base(args):
    transformer_wmt_en_de(args)


@register_model_architecture("transformer", "tie_kd_transformer_big")
def tie_kd_transformer_big(args):
    transformer_vaswani_wmt_en_de_big(args)


def _cpu_sized(args, layers, dim, ffn, heads):
    for side in ("encoder", "decoder"):
        setattr(args, f"{side}_layers", getattr(args, f"{side}_layers", layers))
        setattr(args, f"{side}_embed_dim", getattr(args, f"{side}_embed_dim", dim))
        setattr(args, f"{side}_ffn_embed_dim", getattr(args, f"{side}_ffn_embed_dim", ffn))
        setattr(args, f"{side}_attention_heads", getattr(args, f"{side}_attention_heads", heads))
    base_architecture(args)


@register_model_architecture("transformer", "tie_kd_transformer_small")
def tie_kd_transformer_small(args):
    _cpu_sized(args, layers=3, dim=256, ffn=1024, heads=4)


@register_model_architecture("transformer", "tie_kd_transformer_tiny")
def tie_kd_transformer_tiny(args):
    _cpu_sized(args, layers=2, dim=128, ffn=512, heads=4)


@register_model_architecture("transformer", "tie_kd_transformer_micro")
def tie_kd_transformer_micro(args):
    _cpu_sized(args, layers=1, dim=96, ffn=384, heads=4)
