"""Latent files: round trip, atomic writes, clear errors."""

import pytest
import torch

from dva_model.errors import UserError
from dva_model.formats.latent_io import Latent, load_latent, save_latent


def _latent(n=3, size=16):
    g = torch.Generator().manual_seed(0)
    return Latent(z_id=torch.randn(n, 512, generator=g), z_lnd=torch.rand(n, 102, generator=g),
                  x_T=torch.randn(n, 3, size, size, generator=g), identity=torch.randn(512, generator=g),
                  steps=10, model_id="m.ckpt:123", frame_names=("a", "b", "c"))


def test_round_trip(tmp_path):
    latent = _latent()
    loaded = load_latent(save_latent(tmp_path / "l.safetensors", latent))
    for name in ("z_id", "z_lnd", "x_T", "identity"):
        assert torch.equal(getattr(loaded, name), getattr(latent, name))
    assert (loaded.steps, loaded.model_id, loaded.frame_names) == (10, "m.ckpt:123", ("a", "b", "c"))
    assert [p.name for p in tmp_path.iterdir()] == ["l.safetensors"]  # no temporary left behind


def test_inconsistent_shapes_rejected():
    with pytest.raises(ValueError, match="Inconsistent latent"):
        Latent(z_id=torch.zeros(2, 512), z_lnd=torch.zeros(3, 102), x_T=torch.zeros(3, 3, 8, 8),
               identity=torch.zeros(512), steps=5)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_latent(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable"):
        load_latent(junk)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = save_latent(tmp_path / "shared.safetensors", _latent())
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
