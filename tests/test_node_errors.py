"""The nodes refuse the same bad inputs as the CLI (issue 9): one sentence, raised before any network runs.

ComfyUI checks a FLOAT input's min/max with ``<``/``>``, which NaN passes, and its JSON API accepts NaN,
so a NaN scale reaches ``execute``; a step count inside 2..1000 that the release's respacing cannot make
passes the INT range check. These tests call the nodes as ComfyUI does.
"""

import pytest
import torch

from dva_model.constants import CELEBA_ATTRIBUTES, ID_DIM
from dva_model.edit.classifier import AttributeClassifier
from dva_model.errors import UserError
from dva_model.face.paste import PasteConfig


def classifier(weight=None):
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(len(CELEBA_ATTRIBUTES), ID_DIM, generator=generator) if weight is None else weight
    return AttributeClassifier(weight=weight, mean=torch.zeros(ID_DIM), std=torch.ones(ID_DIM),
                               attribute_names=CELEBA_ATTRIBUTES)


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_attribute_edit_node_refuses_a_non_finite_scale(scale):
    from nodes.edit import DVAAttributeEdit
    from nodes.types import Identity

    with pytest.raises(UserError, match="The scale of the Mustache edit is .*; use a finite number"):
        DVAAttributeEdit.execute(Identity(base=torch.ones(ID_DIM)), classifier(), "Mustache", scale, "keep (exact at 0)")


def test_attribute_edit_node_refuses_a_nan_direction():
    from nodes.edit import DVAAttributeEdit
    from nodes.types import Identity

    weight = torch.randn(len(CELEBA_ATTRIBUTES), ID_DIM)
    weight[CELEBA_ATTRIBUTES.index("Young")] = float("nan")
    with pytest.raises(UserError, match="Young direction is not a finite vector"):
        DVAAttributeEdit.execute(Identity(base=torch.ones(ID_DIM)), classifier(weight), "Young", 0.3, "keep (exact at 0)")


def test_apply_delta_node_refuses_nan_scale_and_nan_delta():
    from nodes.clip_edit import DVAApplyIdentityDelta
    from nodes.types import Identity

    identity = Identity(base=torch.ones(ID_DIM))
    with pytest.raises(ValueError, match="finite"):
        DVAApplyIdentityDelta.execute(identity, torch.ones(ID_DIM), float("nan"), "keep (exact at 0)")
    with pytest.raises(UserError, match="NaN or infinite"):
        DVAApplyIdentityDelta.execute(identity, torch.full((ID_DIM,), float("nan")), 0.5, "keep (exact at 0)")


def test_encode_node_refuses_a_step_count_the_respacing_cannot_make_before_the_graph_runs():
    from nodes.encode import DVAEncode

    assert DVAEncode.VALIDATE_INPUTS(steps=100) is True
    message = DVAEncode.VALIDATE_INPUTS(steps=37)
    assert "37 DDIM steps cannot be spaced evenly" in message and "use 36 or 38" in message


def test_paste_settings_refuse_nan():
    with pytest.raises(ValueError, match="positive finite numbers"):
        PasteConfig(feather=float("nan"))
