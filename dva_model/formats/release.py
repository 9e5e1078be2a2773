"""The authors' released files: where they are, fetching them on request, and the manifest of what came.

The Google Drive ids and the file names are those of the authors' ``download_requirements.sh``
(github.com/gmkim-ai/Diffusion-Video-Autoencoders). Files keep the release's ``checkpoints/`` layout
under the models folder, so the example workflows find the names they use; the DVA checkpoint is
also converted to ``dva.safetensors`` (EMA weights only, no pickle). ``fetch_release`` records the
size and SHA-256 of every file it got in ``dva-downloads.json`` beside them.

Nothing here runs unless a caller asks for a download (the ``download`` command or a loader node's
"download if missing" option).
"""

import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import torch

from dva_model.errors import ModelFileError, UserError
from dva_model.formats.download import DownloadError, download_drive_file, drive_url, file_sha256
from dva_model.formats.files import write_atomically
from dva_model.progress import ProgressCallback

log = logging.getLogger(__name__)

MANIFEST_NAME = "dva-downloads.json"
MANIFEST_FORMAT = "dva-downloads/1"
CONVERTED_MODEL = "dva.safetensors"
RELEASE_REPOSITORY = "https://github.com/gmkim-ai/Diffusion-Video-Autoencoders"


@dataclass(frozen=True)
class ReleaseFile:
    """One released file: its path under the models folder, its Drive id and its size in bytes.

    size is None where the authors published none; the server's announced size is checked instead.
    """

    name: str
    drive_id: str
    size: Optional[int]
    description: str


CHECKPOINT = ReleaseFile("diffusion_video_autoencoder/epoch=51-step=1000000.ckpt",
                         "1Q6z7Wmo9xve5SgfDJExohpDSSNi4QxcH", None, "the DVA (Lightning checkpoint, several GB)")
CLASSIFIER = ReleaseFile("diffusion_video_autoencoder_cls/last.ckpt",
                         "1nddbwuAvIVEqKkkmUF96nJj91jVmAdtR", None, "the attribute classifier (40 CelebA directions)")
LATENT_STATS = ReleaseFile("diffusion_video_autoencoder/latent.pkl",
                           "1J_eAs5-KWn--kmcqx5S-QjVPskTczTMU", None, "identity statistics for the classifier")

# What ``--what`` can name -> the released files it fetches ("clip" comes through open_clip instead).
GROUPS: Dict[str, tuple] = {"dva": (CHECKPOINT,), "classifier": (CLASSIFIER, LATENT_STATS), "clip": ()}
DEFAULT_GROUPS = ("dva", "classifier", "clip")

ProgressFactory = Callable[[str], Optional[ProgressCallback]]  # file name -> callback(done, total)


def parse_groups(text: str) -> tuple:
    """'dva,classifier' -> ('dva', 'classifier'); one sentence naming the choices otherwise."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in GROUPS]
    if unknown or not names:
        raise UserError(f"--what {text!r} is not a comma-separated list of {', '.join(GROUPS)}.")
    return names


def fetch_release(
    folder: Path,
    groups: Iterable[str] = DEFAULT_GROUPS,
    *,
    dtype: torch.dtype = torch.float32,
    retries: int = 2,
    progress: Optional[ProgressFactory] = None,
) -> Dict[str, dict]:
    """Download (or keep, when already there) the released files of ``groups`` into ``folder``.

    The DVA checkpoint is converted to ``folder/dva.safetensors`` (EMA weights, stored as ``dtype``)
    before it gets its final name; the classifier is loaded once likewise. Returns the manifest's
    entries (file name -> size, sha256, source), which are also written to ``folder/dva-downloads.json``.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for group in groups:
        for release in GROUPS[group]:
            if release is CHECKPOINT:
                entries = _fetch_checkpoint(folder, manifest, dtype, retries, progress)
            else:
                entries = _fetch_plain(folder, release, manifest, retries, progress)
            manifest.update(entries)
            write_manifest(folder, manifest)
        if group == "clip":
            manifest.update(_fetch_clip())
            write_manifest(folder, manifest)
    return manifest


def _fetch_checkpoint(folder: Path, manifest: dict, dtype: torch.dtype, retries: int,
                      progress: Optional[ProgressFactory]) -> Dict[str, dict]:
    """The released checkpoint and its conversion ``dva.safetensors`` (skipped when both are there)."""
    from dva_model.formats.checkpoint import load_model, save_model

    target, converted = folder / CHECKPOINT.name, folder / CONVERTED_MODEL
    if target.is_file() and converted.is_file() and {CHECKPOINT.name, CONVERTED_MODEL} <= manifest.keys():
        log.info("%s and %s are already in %s.", CHECKPOINT.name, CONVERTED_MODEL, folder)
        return {}

    def convert(path: Path) -> None:
        save_model(converted, load_model(path), dtype=dtype)

    entries = _fetch_plain(folder, CHECKPOINT, manifest, retries, progress, verify=convert)
    if not converted.is_file():  # the checkpoint was there already
        convert(target)
    entries[CONVERTED_MODEL] = {**_describe(converted), "converted_from": CHECKPOINT.name,
                                "dtype": str(dtype).removeprefix("torch.")}
    log.info("converted %s to %s (EMA weights only).", CHECKPOINT.name, converted)
    return entries


def _fetch_plain(folder: Path, release: ReleaseFile, manifest: dict, retries: int,
                 progress: Optional[ProgressFactory], *,
                 verify: Optional[Callable[[Path], None]] = None) -> Dict[str, dict]:
    """Download ``release`` unless it is already in ``folder``; checked by ``verify`` (or its loader)."""
    target = folder / release.name
    if target.is_file():
        log.info("%s is already in %s.", release.name, folder)
        if release.name in manifest:
            return {}
        return {release.name: {**_describe(target), "source": "already present"}}
    log.info("downloading %s: %s", release.name, release.description)
    downloaded = download_drive_file(
        release.drive_id, target, expected_size=release.size, retries=retries,
        callback=progress(release.name) if progress else None, verify=verify or _VERIFIERS.get(release.name))
    return {release.name: {"size": downloaded.size, "sha256": downloaded.sha256,
                           "source": drive_url(release.drive_id), "downloaded": _now()}}


def _verify_classifier(path: Path) -> None:
    from dva_model.formats.safe_pickle import load_pickled

    checkpoint = load_pickled(path, what="The attribute classifier")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "classifier.weight" not in state:
        raise ModelFileError(f"{path.name} is not an attribute classifier checkpoint (no classifier.weight).")


def _verify_latent_stats(path: Path) -> None:
    from dva_model.formats.identity_stats import load_identity_statistics

    load_identity_statistics(path)


_VERIFIERS = {CLASSIFIER.name: _verify_classifier, LATENT_STATS.name: _verify_latent_stats}


def _fetch_clip() -> Dict[str, dict]:
    """OpenAI's CLIP ViT-B/16 through open_clip's own download, into open_clip's cache."""
    from dva_model.formats.clip_weights import CLIP_MANIFEST_KEY, download_clip_weights, find_cached_clip_weights

    path = find_cached_clip_weights()
    source = "already present"
    if path is None:
        path, source = download_clip_weights(), "open_clip (OpenAI ViT-B/16)"
    return {CLIP_MANIFEST_KEY: {**_describe(path), "path": str(path), "source": source}}


def _describe(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_manifest(folder: Path) -> Dict[str, dict]:
    """The entries of ``folder/dva-downloads.json`` ({} when there is none or it is unreadable)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
    return dict(files) if isinstance(files, dict) else {}


def write_manifest(folder: Path, entries: Dict[str, dict]) -> Path:
    """Write the manifest atomically (sorted, indented: it is meant to be read)."""
    path = Path(folder) / MANIFEST_NAME
    text = json.dumps({"format": MANIFEST_FORMAT, "release": RELEASE_REPOSITORY, "files": entries},
                      indent=2, sort_keys=True) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text))
    return path


def release_file_for(name: str) -> Optional[str]:
    """The ``--what`` group that fetches models-folder file ``name`` (None for files it cannot fetch)."""
    normalised = name.replace("\\", "/")
    if normalised == CONVERTED_MODEL:
        return "dva"
    for group, files in GROUPS.items():
        if any(release.name == normalised for release in files):
            return group
    return None


def known_names() -> tuple:
    """Every models-folder file name a download produces (for loader lists before anything is fetched)."""
    return tuple(release.name for files in GROUPS.values() for release in files) + (CONVERTED_MODEL,)

