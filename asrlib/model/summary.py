"""``asrlib summary --config C``: the model's layers with parameter counts, per block type.

Also used by notebook 02 to compare the presets.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from torch import nn

from asrlib.config import ModelConfig, load_config
from asrlib.model.hybrid import HybridASR, build_model, count_parameters


def summary_rows(model: HybridASR) -> list[tuple[str, str, int]]:
    """(name, kind, parameters) for the frontend, subsampling, each block and each head."""
    rows = [("frontend", "trainable mel" if model.cfg.frontend.trainable_mel else "frozen mel",
             count_parameters(model.frontend)),
            ("encoder.subsampling", f"causal conv x{model.encoder.factor}", count_parameters(model.encoder.subsampling))]
    for i, block in enumerate(model.encoder.blocks):
        rows.append((f"encoder.blocks.{i}", f"conformer/{block.kind}", count_parameters(block)))
    rows.append(("encoder.norm", "RMSNorm", count_parameters(model.encoder.norm)))
    for name in ("ctc_head", "prediction", "joint"):
        rows.append((name, type(getattr(model, name)).__name__, count_parameters(getattr(model, name))))
    if model.simple is not None:  # the pruned loss's projections: trained, never used to decode
        rows.append(("simple", "SimpleProjections", count_parameters(model.simple)))
    return rows


def per_kind(model: nn.Module) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for _, kind, n in summary_rows(model):
        totals[kind] += n
    return dict(totals)


def format_summary(model: HybridASR) -> str:
    rows = summary_rows(model)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'layer':<{width}}{'type':<24}{'parameters':>12}"]
    lines += [f"{name:<{width}}{kind:<24}{n:>12,}" for name, kind, n in rows]
    lines.append("")
    lines += [f"{'total ' + kind:<{width + 24}}{n:>12,}" for kind, n in per_kind(model).items()]
    lines.append(f"{'TOTAL':<{width + 24}}{count_parameters(model):>12,}")
    return "\n".join(lines)


def model_from_config(cfg: ModelConfig, vocab_size: int = 0) -> HybridASR:
    """Build for inspection; without a tokenizer at hand the vocabulary defaults to 1024."""
    if cfg.vocab_size == 0:
        cfg.vocab_size = vocab_size or 1024
    return build_model(cfg)


def main(argv: list[str] | None = None) -> int:
    from asrlib.config import ConfigError
    from asrlib.errors import report_usage_errors

    return report_usage_errors("summary", ConfigError)(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib summary", description="Print a model's layers and parameter counts.")
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--vocab-size", type=int, default=0, help="when the config does not fix it (default: "
                   "the tokenizer's, else 1024)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    vocab = args.vocab_size
    if not vocab and cfg.model.vocab_size == 0 and cfg.tokenizer.tokenizer_path:
        try:
            from asrlib.tokenizer import Tokenizer

            vocab = Tokenizer(cfg.tokenizer.tokenizer_path).vocab_size
        except Exception:
            vocab = 0
    print(format_summary(model_from_config(cfg.model, vocab)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
