"""The frozen face encoders: release key layout, file formats, preprocessing and outputs.

Full-size networks with random weights (dva_model.testing.randomize_) on two 256 crops. Bit-exact
parity with the authors' code is checked separately (parity harness); here the preprocessing is
recomputed by hand and the networks' outputs are checked through stubs whose output we control.
"""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dva_model import constants as C
from dva_model.formats import release_keys as rk
from dva_model.nets import face_encoder as fe
from dva_model.nets.bisenet import FaceParser, foreground_mask
from dva_model.nets.landmark_net import LandmarkEncoder
from dva_model.testing import randomize_

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS_CANDIDATES = (REPO / "docs" / "official-keys.tsv", Path("/work/shared/docs/official-keys.tsv"))
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
# Facts of the release layout (official-keys.tsv), so that the checks below run without the file too.
RELEASE_KEY_COUNTS = {"idnet": 397, "lndnet": 638, "bgnet": 191, "linear": 2}
RELEASE_SHAPE_SAMPLES = {
    "idnet.backbone.output_layer.3.weight": (512, 25088),
    "idnet.backbone.body.23.res_layer.5.fc1.weight": (32, 512, 1, 1),
    "lndnet.backbone.pretrain_net.features.18.0.weight": (1280, 320, 1, 1),
    "lndnet.backbone.base_net.0.17.conv.2.weight": (320, 960, 1, 1),
    "lndnet.backbone.pretrain_net.classifier.1.weight": (1000, 1280),
    "lndnet.backbone.linear7.conv.weight": (1280, 1, 7, 7),
    "lndnet.backbone.linear1.bn.running_var": (136,),
    "bgnet.backbone.cp.resnet.layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "bgnet.backbone.conv_out32.conv_out.weight": (19, 64, 1, 1),
    "linear.weight": (512, 614),
}


@pytest.fixture(scope="module")
def encoder() -> fe.FaceEncoder:
    return randomize_(fe.FaceEncoder(), seed=3).eval()


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """Two 256 crops in [-1, 1]: a smooth image and noise that also leaves the range (clamping matters)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx + c) * torch.cos(2 * yy - c) for c in range(3)])[None]
    noise = torch.rand(1, 3, 256, 256, generator=g) * 2.4 - 1.2
    return torch.cat([smooth, noise])


@pytest.fixture(scope="module")
def outputs(encoder, crops):
    with torch.no_grad():
        return encoder.encode_identity(crops), encoder.encode_landmarks(crops), encoder.parse(crops)


def _official_encoder_keys() -> dict[str, tuple[tuple[int, ...], str]] | None:
    """The ``encoder.*`` rows of official-keys.tsv (prefix stripped) -> (shape, dtype); None without the file."""
    path = next((p for p in OFFICIAL_KEYS_CANDIDATES if p.is_file()), None)
    if path is None:
        return None
    keys = {}
    for line in path.read_text().splitlines():
        if line.startswith("encoder."):
            key, shape, dtype = line.split("\t")
            keys[key[len("encoder."):]] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return keys


def _synthesise(layout: dict[str, tuple[tuple[int, ...], str]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the release layout; base_net.0.* is the SAME tensor as pretrain_net.features.*."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (shape, dtype) in layout.items():
        if "base_net.0." in key:
            continue
        sd[key] = (torch.randint(0, 999, shape, generator=g) if dtype == "int64"
                   else torch.randn(shape, generator=g))
    for key in layout:
        if "base_net.0." in key:
            sd[key] = sd[key.replace("base_net.0.", "pretrain_net.features.")]
    return sd


def _release_layout_from_module() -> dict[str, tuple[tuple[int, ...], str]]:
    sd = rk.release_state_from_encoder(fe.FaceEncoder().state_dict())
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}


def test_release_layout_matches_the_official_keys():
    ours = _release_layout_from_module()
    counts = {group: sum(k.startswith(group + ".") for k in ours) for group in RELEASE_KEY_COUNTS}
    assert counts == RELEASE_KEY_COUNTS
    assert {k: ours[k][0] for k in RELEASE_SHAPE_SAMPLES} == RELEASE_SHAPE_SAMPLES
    official = _official_encoder_keys()
    if official is None:
        pytest.skip("official-keys.tsv not found (looked in docs/ and /work/shared/docs/)")
    assert ours == official


def test_release_state_loads_strictly_and_lands_on_the_right_keys():
    layout = _official_encoder_keys() or _release_layout_from_module()
    release = _synthesise(layout, seed=5)
    target = fe.FaceEncoder()
    target.load_state_dict(rk.encoder_state_from_release(release), strict=True)
    back = rk.release_state_from_encoder(target.state_dict())
    assert back.keys() == release.keys()
    for key, value in release.items():
        if ".classifier." not in key:  # the unused ImageNet head is not kept
            assert torch.equal(back[key], value), key
    assert torch.equal(target.lndnet.backbone.features[18][0].weight,
                       release["lndnet.backbone.pretrain_net.features.18.0.weight"])


def test_release_mapping_accepts_either_landmark_copy_and_names_bad_keys():
    release = _synthesise(_release_layout_from_module(), seed=6)
    alias_only = {k: v for k, v in release.items() if ".pretrain_net." not in k}
    primary_only = {k: v for k, v in release.items() if ".base_net." not in k}
    for partial in (alias_only, primary_only):
        assert rk.encoder_state_from_release(partial).keys() == rk.encoder_state_from_release(release).keys()

    key = "lndnet.backbone.base_net.0.3.conv.1.0.weight"
    differing = dict(release, **{key: release[key] + 1})
    with pytest.raises(ValueError, match=r"lndnet\.backbone\.base_net\.0\.3\.conv\.1\.0\.weight"):
        rk.encoder_state_from_release(differing)
    missing = {k: v for k, v in release.items() if k != "idnet.backbone.body.5.res_layer.1.weight"}
    with pytest.raises(ValueError, match=r"body\.5\.res_layer\.1\.weight"):
        rk.encoder_state_from_release(missing)
    with pytest.raises(ValueError, match="bgnet.backbone.sp.conv"):
        rk.encoder_state_from_release(dict(release, **{"bgnet.backbone.sp.conv.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="lndnet.backbone.extra"):
        rk.encoder_state_from_release(dict(release, **{"lndnet.backbone.extra.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"linear\.weight"):
        rk.encoder_state_from_release(dict(release, **{"linear.weight": torch.zeros(512, 613)}))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_separate_release_files_round_trip(tmp_path, encoder):
    target = fe.FaceEncoder()
    for name in ("idnet", "lndnet", "bgnet"):
        to_file = getattr(rk, f"{name}_file_state")
        from_file = getattr(rk, f"{name}_state_from_file")
        raw = to_file(getattr(encoder, name).state_dict())
        if name == "lndnet":  # through a real file: nested dict, module. prefix, one storage under two names
            torch.save(raw, tmp_path / "landmarks.pth.tar")
            raw = torch.load(tmp_path / "landmarks.pth.tar", weights_only=True)
            raw_landmarks = raw
        getattr(target, name).load_state_dict(from_file(raw), strict=True)
        _assert_same(getattr(target, name), getattr(encoder, name))

    keys = raw_landmarks["state_dict"].keys()
    assert all(k.startswith("module.") for k in keys)
    assert "module.base_net.0.18.1.running_var" in keys and "module.pretrain_net.classifier.1.bias" in keys
    assert raw_landmarks["state_dict"]["module.base_net.0.0.0.weight"].data_ptr() == \
        raw_landmarks["state_dict"]["module.pretrain_net.features.0.0.weight"].data_ptr()  # one storage, two names


def test_separate_files_tolerate_old_batchnorm_files_and_name_bad_keys(encoder):
    raw = rk.idnet_file_state(encoder.idnet.state_dict())
    old = {k: v for k, v in raw.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(raw)
    state = rk.idnet_state_from_file(old)
    assert state["backbone.input_layer.1.num_batches_tracked"].item() == 0
    fe.FaceEncoder().idnet.load_state_dict(state, strict=True)

    with pytest.raises(ValueError, match="output_layer.3.weight"):
        rk.idnet_state_from_file({k: v for k, v in raw.items() if k != "output_layer.3.weight"})
    bisenet = rk.bgnet_file_state(encoder.bgnet.state_dict())
    with pytest.raises(ValueError, match="cp.resnet.fc.weight"):
        rk.bgnet_state_from_file(dict(bisenet, **{"cp.resnet.fc.weight": torch.zeros(1000, 512)}))
    landmarks = rk.lndnet_file_state(encoder.lndnet.state_dict())
    with pytest.raises(ValueError, match="module.optimizer_thing"):
        bad = dict(landmarks["state_dict"], **{"module.optimizer_thing": torch.zeros(1)})
        rk.lndnet_state_from_file({"state_dict": bad})


def test_outputs_have_the_documented_shapes_and_ranges(encoder, crops, outputs):
    z_id, z_lnd, labels = outputs
    assert z_id.shape == (2, C.ID_DIM) and z_id.dtype == torch.float32
    torch.testing.assert_close(z_id.norm(dim=1), torch.ones(2))
    assert not torch.allclose(z_id[0], z_id[1], atol=1e-3)
    assert z_lnd.shape == (2, C.LANDMARK_DIM)
    assert z_lnd.min() >= 0 and z_lnd.max() <= 1 and z_lnd.std() > 0
    assert labels.shape == (2, 256, 256) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < len(C.PARSING_CLASSES)
    assert labels.unique().numel() > 1

    with torch.no_grad():
        z_face = encoder.face_condition(z_id, z_lnd)
        expected = torch.cat([z_id, z_lnd], 1) @ encoder.linear.weight.T + encoder.linear.bias
        torch.testing.assert_close(z_face, expected)
        assert z_face.shape == (2, C.FACE_COND_DIM)
    with pytest.raises(ValueError, match="z_lnd"):
        encoder.face_condition(z_id, z_lnd[:1])


def test_train_mode_changes_nothing_and_only_linear_is_trainable(encoder, crops, outputs):
    one = crops[1:]  # one crop: BatchNorm in train mode would normalise it with its own statistics
    encoder.train()
    try:
        with torch.no_grad():
            again = encoder.encode_identity(one), encoder.encode_landmarks(one), encoder.parse(one)
    finally:
        encoder.eval()
    for before, after in zip(outputs, again):
        torch.testing.assert_close(after, before[1:], atol=1e-5, rtol=1e-5)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"linear.weight", "linear.bias"}


def test_forward_is_the_per_frame_face_condition(crops):
    model = fe.FaceEncoder()
    model.idnet = _Recorder(lambda x: torch.full((x.shape[0], C.ID_DIM), 0.5))
    model.lndnet = _Recorder(lambda x: torch.full((x.shape[0], C.LANDMARK_DIM), 0.25))
    with torch.no_grad():
        z_face = model(crops)
        torch.testing.assert_close(z_face, model.face_condition(torch.full((2, C.ID_DIM), 0.5),
                                                                torch.full((2, C.LANDMARK_DIM), 0.25)))
    assert model.idnet.seen is not None and torch.equal(model.lndnet.seen, crops)


def _adaptive_pool_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[out, in] averaging matrix of adaptive average pooling (windows floor(i*in/out)..ceil((i+1)*in/out))."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, math.ceil((i + 1) * size_in / size_out)
        m[i, lo:hi] = 1 / (hi - lo)
    return m


def test_identity_preprocessing_is_the_release_crop_and_pooling(encoder, crops, outputs):
    pool = _adaptive_pool_matrix(188, 112)
    window = crops.double()[:, :, 35:223, 32:220]
    by_hand = (pool @ window @ pool.T).float()  # [2, 3, 112, 112]
    with torch.no_grad():
        torch.testing.assert_close(encoder.idnet.backbone(by_hand), outputs[0], atol=2e-5, rtol=1e-4)
        # A 512 input is first averaged down to 256: 2x2 block means.
        g = torch.Generator().manual_seed(1)
        big = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1
        blocks = big.reshape(1, 3, 256, 2, 256, 2).mean(dim=(3, 5))
        torch.testing.assert_close(encoder.encode_identity(big), encoder.encode_identity(blocks),
                                   atol=2e-5, rtol=1e-4)


class _Recorder(nn.Module):
    """Stands in for a backbone: records its input and returns ``make(x)``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make, self.seen = make, None

    def forward(self, x):
        self.seen = x.clone()
        return self.make(x)


def test_landmark_preprocessing_clamp_and_jaw_drop(crops):
    raw = torch.linspace(-0.5, 1.5, 2 * C.LANDMARK_POINTS)[None] + torch.tensor([[0.0], [0.25]])  # [2, 136]
    stub = _Recorder(lambda x: raw)
    net = LandmarkEncoder()
    net.backbone = stub
    z_lnd = net(crops)
    expected_input = ((crops[:, :, 16:240, 16:240] + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(stub.seen, expected_input)
    # Point p has raw outputs 2p (x) and 2p+1 (y); jaw points 0..16 (raw 0..33) are dropped.
    torch.testing.assert_close(z_lnd, raw[:, 34:].clamp(0, 1))
    assert z_lnd.shape == (2, C.LANDMARK_DIM)

    net(crops[:, :, 16:240, 16:240])
    torch.testing.assert_close(stub.seen, expected_input)  # a 224 crop is used as is
    with pytest.raises(ValueError, match="256"):
        net(crops[:, :, :200, :200])


def test_parser_preprocessing_and_label_resizing(crops):
    def logits(x):  # class of a pixel = (row // 27) % 19 of the 512 map
        rows = (torch.arange(512) // 27) % len(C.PARSING_CLASSES)
        onehot = torch.nn.functional.one_hot(rows, len(C.PARSING_CLASSES)).T.float()  # [19, 512]
        return onehot[None, :, :, None].expand(x.shape[0], -1, -1, 512)

    stub = _Recorder(logits)
    parser = FaceParser()
    parser.backbone = stub
    labels = parser(crops)
    upsampled = crops.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 256 -> 512
    expected_input = ((upsampled.clamp(-1, 1) + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(stub.seen, expected_input)
    expected = ((2 * torch.arange(256)) // 27) % len(C.PARSING_CLASSES)  # nearest 512 -> 256 takes row 2r
    assert torch.equal(labels, expected[None, :, None].expand(2, 256, 256))
    assert parser(crops[:, :, :128, :96]).shape == (2, 128, 96)


@pytest.mark.parametrize("excluded", [C.TRAINING_MASK_EXCLUDED, C.PASTE_MASK_EXCLUDED])
def test_foreground_mask_excludes_exactly_the_listed_classes(excluded):
    labels = torch.arange(len(C.PARSING_CLASSES)).repeat(2, 3, 1)  # [2, 3, 19]
    mask = foreground_mask(labels, excluded)
    assert mask.shape == (2, 1, 3, 19) and mask.dtype == torch.float32
    background = [c for c in range(len(C.PARSING_CLASSES)) if mask[0, 0, 0, c] == 0]
    assert background == sorted(excluded)
    assert torch.equal(mask, mask[:1, :, :1].expand_as(mask))


def test_foreground_mask_rejects_bad_input():
    with pytest.raises(TypeError):
        foreground_mask(torch.zeros(1, 4, 4), C.TRAINING_MASK_EXCLUDED)
    with pytest.raises(ValueError, match="19"):
        foreground_mask(torch.zeros(1, 4, 4, dtype=torch.long), (0, 19))


def test_building_the_encoder_never_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    fe.FaceEncoder()


def test_encoders_reject_bad_images(encoder):
    with pytest.raises(TypeError):
        encoder.encode_identity(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder.parse(torch.zeros(3, 256, 256))
