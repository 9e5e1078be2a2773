"""The published classifier edit, the release's classifier file layout and our direction files."""

import math

import pytest
import torch

from dva_model.edit.classifier import (AttributeClassifier, edit_identity, load_classifier, parse_edit,
                                  save_directions)
from dva_model.constants import CELEBA_ATTRIBUTES, ID_DIM
from dva_model.errors import ModelFileError, UserError


def _classifier(seed: int = 0) -> AttributeClassifier:
    g = torch.Generator().manual_seed(seed)
    return AttributeClassifier(
        weight=torch.randn(40, ID_DIM, generator=g), mean=torch.randn(ID_DIM, generator=g) * 0.05,
        std=torch.rand(ID_DIM, generator=g) * 0.05 + 0.02, attribute_names=CELEBA_ATTRIBUTES)


def _clip_identity(seed: int = 1) -> torch.Tensor:
    z = torch.nn.functional.normalize(torch.randn(6, ID_DIM, generator=torch.Generator().manual_seed(seed)), dim=1)
    return z.mean(0)  # a mean of unit vectors: shorter than 1, as in the release


def test_unit_mode_is_the_published_formula():
    cls, z = _classifier(), _clip_identity()
    k = CELEBA_ATTRIBUTES.index("Mustache")
    normalised = (z - cls.mean) / cls.std
    moved = normalised + 0.25 * math.sqrt(512) * cls.weight[k] / cls.weight[k].norm()
    expected = moved * cls.std + cls.mean
    expected = expected / expected.norm()
    got = edit_identity(z, cls, [("Mustache", 0.25)], norm="unit")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert got.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_unit_mode_at_zero_scale_differs_from_input_as_released():
    z = _clip_identity()
    got = edit_identity(z, _classifier(), [("Mustache", 0.0)], norm="unit")
    assert z.norm() < 0.99 and got.norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(got, z / z.norm())


def test_keep_mode_zero_scale_is_exact_identity_and_keeps_norm_otherwise():
    cls, z = _classifier(), _clip_identity()
    assert torch.equal(edit_identity(z, cls, [("Young", 0.0)]), z)
    edited = edit_identity(z, cls, [("Young", -0.4)])
    assert edited.norm().item() == pytest.approx(z.norm().item(), rel=1e-5)
    unit = edit_identity(z, cls, [("Young", -0.4)], norm="unit")
    torch.testing.assert_close(edited / edited.norm(), unit)


def test_several_attributes_sum_their_directions():
    cls, z = _classifier(), _clip_identity()
    both = edit_identity(z, cls, [("Mustache", 0.2), ("Blond_Hair", 0.3)], norm="unit")
    normalised = (z - cls.mean) / cls.std
    for name, s in (("Mustache", 0.2), ("Blond_Hair", 0.3)):
        normalised = normalised + s * math.sqrt(512) * cls.direction(name)
    expected = normalised * cls.std + cls.mean
    torch.testing.assert_close(both, expected / expected.norm(), rtol=0, atol=1e-6)


def test_unknown_attribute_names_the_closest():
    with pytest.raises(UserError, match="Did you mean Mustache"):
        edit_identity(_clip_identity(), _classifier(), [("Moustache", 0.2)])
    assert _classifier().index("mustache") == CELEBA_ATTRIBUTES.index("Mustache")


def test_parse_edit():
    assert parse_edit("No_Beard:-0.5") == ("No_Beard", -0.5)
    for bad in ("Mustache", "Mustache:x", ":0.3"):
        with pytest.raises(UserError, match="NAME:SCALE"):
            parse_edit(bad)


def _write_release_classifier(path, cls, *, with_stats=True):
    state = {"classifier.weight": cls.weight, "classifier.bias": torch.randn(40),
             "ema_classifier.weight": torch.randn(40, ID_DIM), "ema_classifier.bias": torch.randn(40)}
    if with_stats:
        state.update(conds_mean=cls.mean[None], conds_std=cls.std[None])
    torch.save({"state_dict": state, "global_step": 9400, "epoch": 0}, path)
    return path


def test_release_classifier_uses_non_ema_weights_and_its_own_statistics(tmp_path):
    cls = _classifier()
    path = _write_release_classifier(tmp_path / "last.ckpt", cls)
    stats = tmp_path / "latent.pkl"
    torch.save({"conds": torch.randn(3, ID_DIM), "conds_mean": torch.zeros(ID_DIM), "conds_std": torch.ones(ID_DIM)}, stats)
    loaded = load_classifier(path, latent_stats=stats)  # the checkpoint's statistics take precedence
    assert torch.equal(loaded.weight, cls.weight)
    assert torch.equal(loaded.mean, cls.mean) and torch.equal(loaded.std, cls.std)
    assert loaded.attribute_names == CELEBA_ATTRIBUTES


def test_release_classifier_without_statistics_needs_latent_pkl(tmp_path):
    path = _write_release_classifier(tmp_path / "last.ckpt", _classifier(), with_stats=False)
    with pytest.raises(ModelFileError, match="latent.pkl"):
        load_classifier(path)
    stats = tmp_path / "latent.pkl"
    torch.save({"conds_mean": torch.full((ID_DIM,), 0.5), "conds_std": torch.full((ID_DIM,), 2.0)}, stats)
    assert load_classifier(path, latent_stats=stats).mean[0].item() == 0.5


def test_direction_file_round_trip(tmp_path):
    cls = _classifier()
    loaded = load_classifier(save_directions(tmp_path / "dirs.safetensors", cls))
    assert loaded.attribute_names == cls.attribute_names
    z = _clip_identity()
    torch.testing.assert_close(edit_identity(z, loaded, [("Bald", 0.3)]), edit_identity(z, cls, [("Bald", 0.3)]))


def test_foreign_and_missing_classifier_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_classifier(tmp_path / "nope.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"something.weight": torch.ones(2)}}, foreign)
    with pytest.raises(ModelFileError, match="not an attribute classifier"):
        load_classifier(foreign)
