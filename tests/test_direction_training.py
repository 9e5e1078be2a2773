"""Attribute-direction training: planted directions are recovered, files load as AttributeEdit expects."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dva_model.cli import main as cli
from dva_model.edit.classifier import edit_identity, load_classifier, save_directions
from dva_model.constants import CELEBA_ATTRIBUTES, CROP_SIZE, ID_DIM
from dva_model.edit.direction_training import (
    DirectionTrainingConfig, feature_statistics, load_face_image, load_features, read_labels,
    save_release_classifier, train_directions,
)
from dva_model.errors import UserError
from dva_model.testing import single_thread
from comfy_fakes import install


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def planted_features(count: int, seed: int):
    """Identities mean + std * g with labels drawn from sigmoid(10 <g, u>): u is the planted direction
    in the NORMALISED space the classifier works in."""
    generator = torch.Generator().manual_seed(seed)
    mean = 0.02 * torch.randn(ID_DIM, generator=generator)
    std = 0.03 + 0.02 * torch.rand(ID_DIM, generator=generator)
    u = F.normalize(torch.randn(ID_DIM, generator=generator), dim=0)
    g = torch.randn(count, ID_DIM, generator=generator)
    positive = torch.rand(count, generator=generator) < torch.sigmoid(10 * g @ u)
    labels = torch.where(positive, 1.0, -1.0)[:, None]  # CelebA's -1 / 1
    return mean + std * g, labels, u


def test_planted_direction_is_recovered():
    features, labels, u = planted_features(4000, seed=0)
    mean, std = feature_statistics(features)
    trained = train_directions(features, labels, attribute_names=("planted",), mean=mean, std=std,
                               config=DirectionTrainingConfig(steps=1500))
    cosine = F.cosine_similarity(trained.classifier.weight[0], u, dim=0).item()
    assert cosine > 0.9, cosine
    assert np.mean(trained.losses[-50:]) < trained.losses[0] - 0.2
    # An unknown (NaN) column never moves: its row keeps PyTorch's seeded initialisation.
    both = torch.cat([labels, torch.full_like(labels, math.nan)], dim=1)
    short = DirectionTrainingConfig(steps=20, seed=3)
    trained_nan = train_directions(features, both, attribute_names=("planted", "unknown"), mean=mean, std=std,
                                   config=short)
    torch.manual_seed(3)
    initial = torch.nn.Linear(ID_DIM, 2)
    assert torch.equal(trained_nan.classifier.weight[1], initial.weight[1].detach())
    assert not torch.equal(trained_nan.classifier.weight[0], initial.weight[0].detach())


def test_statistics_use_the_first_view_and_unbiased_std():
    features = torch.randn(10, 2, ID_DIM)
    mean, std = feature_statistics(features)
    torch.testing.assert_close(mean, features[:, 0].mean(0))
    torch.testing.assert_close(std, torch.from_numpy(np.std(features[:, 0].numpy(), axis=0, ddof=1)))
    with pytest.raises(ValueError):
        feature_statistics(torch.randn(1, ID_DIM))


def _published_edit(z_id, weight, mean, std, scale):
    z = (z_id - mean) / std + scale * math.sqrt(ID_DIM) * weight / weight.norm()
    z = z * std + mean
    return z / z.norm()


def test_trained_files_are_accepted_and_edit_as_published(tmp_path):
    features, labels, _ = planted_features(300, seed=1)
    labels40 = labels.repeat(1, len(CELEBA_ATTRIBUTES))
    mean, std = feature_statistics(features)
    trained = train_directions(features, labels40, attribute_names=CELEBA_ATTRIBUTES, mean=mean, std=std,
                               config=DirectionTrainingConfig(steps=10))
    ours = load_classifier(save_directions(tmp_path / "ours.safetensors", trained.classifier))
    release = load_classifier(save_release_classifier(tmp_path / "last.ckpt", trained))
    z_id = 0.9 * F.normalize(features[0] - mean, dim=0)
    k = CELEBA_ATTRIBUTES.index("Mustache")
    expected = _published_edit(z_id, trained.classifier.weight[k], mean, std, 0.25)
    for loaded in (ours, release):
        assert loaded.attribute_names == CELEBA_ATTRIBUTES
        torch.testing.assert_close(edit_identity(z_id, loaded, [("Mustache", 0.25)], norm="unit"), expected)
    custom = train_directions(features, labels, attribute_names=("Freckles",), mean=mean, std=std,
                              config=DirectionTrainingConfig(steps=5))
    with pytest.raises(ValueError):
        save_release_classifier(tmp_path / "custom.ckpt", custom)


def test_label_files(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("file,Freckles,Smiling\na.png,1,0\nb.png,-1,1\nc.png,,1\n")
    table = read_labels(csv_file)
    assert table.files == ("a.png", "b.png", "c.png") and table.attributes == ("Freckles", "Smiling")
    assert torch.equal(torch.nan_to_num(table.labels, nan=-9.0), torch.tensor([[1.0, 0.0], [0.0, 1.0], [-9.0, 1.0]]))
    assert table.select(["smiling"]).attributes == ("Smiling",)
    with pytest.raises(UserError):
        table.select(["Bald"])

    anno = tmp_path / "CelebAMask-HQ-attribute-anno.txt"
    values = ["1" if i % 3 == 0 else "-1" for i in range(len(CELEBA_ATTRIBUTES))]
    anno.write_text(f"2\n{' '.join(CELEBA_ATTRIBUTES)}\n0.jpg  {' '.join(values)}\n1.jpg {' '.join(values[::-1])}\n")
    celeba = read_labels(anno)
    assert celeba.attributes == CELEBA_ATTRIBUTES and celeba.files == ("0.jpg", "1.jpg")
    assert celeba.labels[0, 0] == 1 and celeba.labels[0, 1] == 0 and celeba.labels[1, -1] == 1

    (tmp_path / "bad.csv").write_text("file,Freckles\na.png,yes\n")
    with pytest.raises(UserError, match="not a number"):
        read_labels(tmp_path / "bad.csv")


def test_face_images_are_resized_and_centre_cropped(tmp_path):
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, 50:150] = 255  # the centre square is white, the sides black
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = load_face_image(tmp_path / "wide.png")
    assert image.shape == (3, CROP_SIZE, CROP_SIZE) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert image[:, :, 5:-5].min() > 0.9  # only the white centre survives the crop


def test_train_direction_command(tmp_path, tiny_safetensors, monkeypatch, comfy_host):
    monkeypatch.setattr(cli, "COMMANDS", tuple(dict.fromkeys(cli.COMMANDS + ("train_direction",))))
    images = tmp_path / "faces"
    images.mkdir()
    generator = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(generator.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (tmp_path / "labels.csv").write_text("image,Freckles,Tattoo\n0.png,1,0\n1.png,0,1\n2.png,1,1\n3.jpg,0,0\n")
    out, cache = tmp_path / "directions.safetensors", tmp_path / "features.safetensors"
    common = ["--quiet", "train-direction", "--images", str(images), "--labels", str(tmp_path / "labels.csv"),
              "--steps", "15", "--train-batch", "4", "--features-cache", str(cache)]
    assert cli.main(common + ["--checkpoint", str(tiny_safetensors), "--out", str(out)]) == 0
    directions = load_classifier(out)
    assert directions.attribute_names == ("Freckles", "Tattoo") and directions.weight.shape == (2, ID_DIM)
    files, features = load_features(cache)
    assert files == ("0.png", "1.png", "2.png", "3.jpg") and features.shape == (4, 2, ID_DIM)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(4, 2))
    assert not torch.allclose(features[:, 0], features[:, 1])  # the mirrored view is a different image
    mean, std = feature_statistics(features)
    torch.testing.assert_close(directions.mean, mean)
    torch.testing.assert_close(directions.std, std)
    # A rerun reuses the cached identities: the (missing) checkpoint is never opened.
    again = tmp_path / "again.safetensors"
    assert cli.main(common + ["--checkpoint", str(tmp_path / "absent.ckpt"), "--out", str(again)]) == 0
    assert torch.equal(load_classifier(again).weight, directions.weight)  # same seed, same identities
    assert cli.main(common + ["--checkpoint", str(tmp_path / "absent.ckpt"), "--out", str(again),
                              "--attributes", "Tattoo"]) == 0
    assert load_classifier(again).attribute_names == ("Tattoo",)
    assert cli.main(common + ["--checkpoint", str(tiny_safetensors), "--out", str(again), "--format", "release"]) == 2

    # ComfyUI: DVA Classifier Loader reads the file, DVA Attribute Edit moves along a custom direction.
    from nodes.edit import DVAAttributeEdit
    from nodes.load import DVAClassifierLoader
    from nodes.types import Identity

    name = install(out, comfy_host.models / "dva", "directions/freckles.safetensors")
    (loaded,) = DVAClassifierLoader.execute(name, "none")
    z_id = 0.95 * F.normalize(features[0, 0], dim=0)
    (edited,) = DVAAttributeEdit.execute(Identity(base=z_id), loaded, "Mustache", 0.3, "unit (as released)",
                                         custom_attribute="Freckles")
    expected = _published_edit(z_id, directions.weight[0], directions.mean, directions.std, 0.3)
    torch.testing.assert_close(edited.edited(), expected)
