"""Turn a checkpoint folder ``--fsdp`` wrote into the plain checkpoint format, on one process and the CPU.

    python tools/dcp_to_plain.py output_dir/checkpoint-399.dcp checkpoint-399.pth

The output is what a run without ``--fsdp`` saves: whole weights under the model's keys (what ``--finetune``,
``--resume`` and ``tools/export.py`` read), the optimizer state, epoch, step, args and RNG states; it resumes
without ``--fsdp`` exactly. Everything is read safely (``util.fsdp.SafeReader``, ``weights_only``) and the
output is written atomically; it is never the input folder or inside it, and an existing file is replaced
only with ``--force``. The whole model and its optimizer state must fit in this machine's memory.
"""
import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script

from util.checkpoint import save_checkpoint  # noqa: E402
from util.flags import ArgumentParser  # noqa: E402
from util.fsdp import sharded_to_plain  # noqa: E402
from util.output_files import check_output_file  # noqa: E402
from util.runtime import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("Convert an --fsdp checkpoint folder (DCP) to a plain .pth checkpoint")
    p.add_argument("checkpoint", help="a checkpoint-<epoch>.dcp folder")
    p.add_argument("out", help="the .pth file to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return p


def convert(args: argparse.Namespace) -> None:
    """Write the plain checkpoint of the ``--fsdp`` folder ``args.checkpoint`` to ``args.out``."""
    check_output_file(args.out, inputs=[args.checkpoint], force=args.force, flag="OUT")
    # DCP warns that it reads in one process, which is what this tool is for
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    plain = sharded_to_plain(args.checkpoint)
    save_checkpoint(args.out, plain)
    print(f"wrote {args.out}: {len(plain['model'])} weights, epoch {plain.get('epoch')}, step {plain.get('step')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Convert as ``argv`` (default: the command line) says; a ``UsageError`` is one line and status 2."""
    return run_tool(convert, build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
