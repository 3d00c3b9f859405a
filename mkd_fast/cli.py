"""The `mkd-fast` command line."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _info(_args) -> int:
    import torch

    from . import __version__
    from .backends import backends

    print(f"mkd_fast {__version__}, torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, "
          f"GPU {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    for name, st in backends().items():
        print(f"  {name:<7} {'available' if st.available else 'missing':<10} {st.reason}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(repeats=args.repeats, use_compile=not args.no_compile, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkd-fast", description="Fused distillation losses and multi-task KD")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list the loss backends and why any is missing")
    info.set_defaults(func=_info)
    demo = sub.add_parser("demo", help="check and time the fused losses on this machine")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    demo.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
