"""``download``: the authors' released models (and OpenAI's CLIP), fetched only when asked, then converted."""

import argparse
import logging
from pathlib import Path

from dva_model.cli.convert import STORAGE
from dva_model.cli.progress_bar import terminal_progress
from dva_model.formats.release import CONVERTED_MODEL, DEFAULT_GROUPS, MANIFEST_NAME, fetch_release, parse_groups

log = logging.getLogger(__name__)
DEFAULT_FOLDER = Path("models/dva")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "download", help="fetch the released DVA checkpoint, classifier and CLIP (on request only)",
        description="Download the authors' released files from their public Google Drive links (resuming an "
                    "interrupted download), convert the DVA checkpoint to a compact .safetensors, and record "
                    f"the size and SHA-256 of every file in {MANIFEST_NAME}. CLIP goes to open_clip's cache.",
    )
    parser.add_argument("--to", type=Path, default=DEFAULT_FOLDER,
                        help=f"models folder (default {DEFAULT_FOLDER}; in ComfyUI: ComfyUI/models/dva)")
    parser.add_argument("--what", type=_groups, default=DEFAULT_GROUPS, metavar="LIST",
                        help=f"comma-separated: dva, classifier, clip (default {','.join(DEFAULT_GROUPS)})")
    parser.add_argument("--dtype", choices=sorted(STORAGE), default="fp32",
                        help=f"storage precision of {CONVERTED_MODEL}")
    parser.add_argument("--retries", type=int, default=2, help="times an interrupted transfer is resumed in one run")
    parser.set_defaults(func=run)


def _groups(text: str) -> tuple:
    try:
        return parse_groups(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    def progress(name: str):
        return terminal_progress(name, enabled=not args.quiet, unit="B")

    manifest = fetch_release(args.to, args.what, dtype=STORAGE[args.dtype], retries=max(0, args.retries),
                             progress=progress)
    for name, entry in sorted(manifest.items()):
        log.info("%s  %s  %s", entry["sha256"][:16], f"{entry['size']:>14,}", entry.get("path", name))
    log.info("models are in %s (sizes and SHA-256 in %s)", args.to, args.to / MANIFEST_NAME)
    return 0
