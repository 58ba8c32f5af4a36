"""Command line of the data layer: `python -m dualprompt.data check --data-root DIR [--datasets a,b] [--deep]`.

Prints one line per dataset (`ready`, `wrong count`, `missing: ...`, `invalid: ...`). Exit status:
0 if every requested dataset is ready, 1 otherwise, 2 for bad usage (one sentence on stderr).
`--deep` also decodes every image (on a terminal, with a progress count on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualprompt.data.catalogue import default_data_root, needs_data_root
from dualprompt.data.check import check_dataset, default_check_names, validate_names
from dualprompt.data.errors import DataError

EXIT_READY, EXIT_NOT_READY, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command for now: check)."""
    parser = argparse.ArgumentParser(
        prog="python -m dualprompt.data", description="Commands of the dualprompt data layer.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="check that datasets are laid out as DATASETS.md says and have the published sizes",
        description="Check that datasets are laid out as DATASETS.md says and have the published sizes.",
    )
    check.add_argument(
        "--data-root", type=Path, default=None,
        help="folder holding one sub-folder per dataset (default: $DUALPROMPT_DATA_ROOT or "
             "~/.cache/dualprompt/data)",
    )
    check.add_argument(
        "--datasets", default=None,
        help="comma-separated catalogue names or folder:<path> (your own class folders), e.g. dtd,eurosat "
             "(default: all real datasets; synthetic ones only when named)",
    )
    check.add_argument(
        "--deep", action="store_true",
        help="also open and fully decode every image, and name the unreadable ones (slow on large datasets)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    data_root = (args.data_root or default_data_root()).expanduser()
    names = [name.strip() for name in args.datasets.split(",") if name.strip()] if args.datasets else (
        default_check_names()
    )
    try:
        validate_names(names)
    except DataError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    if not data_root.is_dir() and any(needs_data_root(name) for name in names):
        print(f"Data root {data_root} does not exist; pass the folder holding your datasets with "
              "--data-root (see DATASETS.md).", file=sys.stderr)
        return EXIT_USAGE
    width = max(len(name) for name in names)
    all_ready = True
    for name in names:
        # Printed as it goes: listing ImageNet's 1.28M train images takes a while.
        progress = _progress_printer(name) if args.deep and sys.stderr.isatty() else None
        result = check_dataset(name, data_root, deep=args.deep, progress=progress)
        if progress is not None:
            print("\r\033[K", end="", file=sys.stderr, flush=True)  # clear the progress count
        print(result.line(width), flush=True)
        all_ready = all_ready and result.ok
    return EXIT_READY if all_ready else EXIT_NOT_READY


def _progress_printer(name: str):
    """A `progress(done, total)` that rewrites one stderr line: a deep check of ImageNet takes hours."""
    def progress(done: int, total: int) -> None:
        print(f"\r{name}: decoded {done} of {total} images", end="", file=sys.stderr, flush=True)
    return progress


if __name__ == "__main__":
    sys.exit(main())
