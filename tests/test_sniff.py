"""model_kind tells model files apart by a header peek that never unpickles."""

import os
import zipfile

import torch

from dva_model.formats.sniff import model_kind


class _Trap:
    """Unpickling this would create a file (it names os.system via __reduce__)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_release_files_ours_and_unknown_ones(tmp_path, tiny_checkpoint, tiny_safetensors):
    from test_workflows import _release_classifier

    assert model_kind(tiny_checkpoint) == "dva"  # the released Lightning layout
    assert model_kind(tiny_safetensors) == "dva"  # our converted format
    assert model_kind(_release_classifier(tmp_path / "cls" / "last.ckpt")) == "classifier"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "clip.pt")
    assert model_kind(tmp_path / "clip.pt") == "clip"
    (tmp_path / "latent.pkl").write_bytes(b"anything")
    assert model_kind(tmp_path / "latent.pkl") == "latent_stats"
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert model_kind(tmp_path / "broken.ckpt") == model_kind(tmp_path / "empty.safetensors") == "unknown"


def test_the_peek_never_runs_a_pickle(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "trap.ckpt"
    torch.save({"state_dict": {"classifier.weight": torch.zeros(2)}, "hook": _Trap(marker)}, path)
    assert zipfile.is_zipfile(path)
    assert model_kind(path) == "classifier"
    assert not marker.exists(), "reading the kind executed code from the file"
