"""The `sar` command line."""
from __future__ import annotations

import argparse
import sys


def cmd_import_flexvar(args) -> int:
    from sar_core.flexvar_import import import_flexvar

    gen, tok = import_flexvar(args.generator, args.vqvae, args.out, image_size=args.image_size)
    print(f"generator -> {gen}\ntokenizer -> {tok}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sar", description="SAR post-training platform")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import-flexvar", help="convert published FlexVAR weights into sar-platform checkpoints")
    p.add_argument("--generator", required=True, help="FlexVAR generator .pth (e.g. FlexVARd16-epo179.pth)")
    p.add_argument("--vqvae", required=True, help="FlexVAR VQ-VAE .pth (FlexVAE.pth)")
    p.add_argument("--out", required=True, help="output folder for generator/tokenizer .safetensors")
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=cmd_import_flexvar)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
