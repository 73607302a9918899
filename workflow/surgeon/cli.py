"""`surgeon <stage>`: every stage with explicit input and output paths (the rules call these).

Each stage lives in its own module of `surgeon.stages` (named like its rule file) with its
parser and run function; this module only assembles them.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import SurgeonError
from .stages import (compact, curvature, data, evaluate, figures, prune, quantize, recover,
                     report, verify, zeroshot)

STAGES = (data, curvature, prune, recover, compact, quantize, evaluate, zeroshot, report, figures,
          verify)


class HelpFormatter(argparse.HelpFormatter):
    """Ends every option's help with its default, where there is one to show: not for a
    required option, a flag, or a help text that already says what the default is."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if (action.required or default is None or default is argparse.SUPPRESS
                or action.nargs == 0 or "default" in text):
            return text
        return f"{text} (default: {'none' if default in ('', []) else '%(default)s'})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgeon", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"surgeon {__version__}")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's own choice)")
    sub = p.add_subparsers(dest="stage", required=True)
    for stage in STAGES:
        stage.add_parsers(sub)
    for stage_parser in sub.choices.values():
        stage_parser.formatter_class = HelpFormatter
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        from .artifacts import check_outputs, verify_inputs

        check_outputs(vars(args))  # an unwritable output stops here, before hours of work
        verify_inputs(vars(args))  # a truncated or altered input stops here, named
        status = args.func(args)  # verify returns 1 for a damaged artifact
    except SurgeonError as err:
        print(f"surgeon {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `surgeon inspect ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
