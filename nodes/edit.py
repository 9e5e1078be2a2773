"""Identity nodes: the clip's time-invariant identity, and attribute edits of it (chainable)."""

from comfy_api.v0_0_2 import io

from .types import CATEGORY_EDIT, AttributeEditStep, Classifier, Identity, IdentityType, Latent

SOURCE_INVERSION = "inversion identity"
SOURCE_MEAN = "mean of all frames"
NORMS = {"keep (exact at 0)": "keep", "unit (as released)": "unit"}
MAX_SCALE = 5.0


class DVAIdentityAverage(io.ComfyNode):
    """The identity to decode with: the one the clip was inverted with (its mean ArcFace feature)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAIdentityAverage", display_name="DVA Identity Average", category=CATEGORY_EDIT,
            description=(
                "Builds the clip's time-invariant identity (DVA_IDENTITY) from an encoding. Decoding with it "
                "unedited reproduces the input; edit nodes change it for every frame at once."),
            inputs=[
                Latent.Input("latent", tooltip="The clip's encoding from DVA Encode or DVA Load Latent."),
                io.Combo.Input("source", options=[SOURCE_INVERSION, SOURCE_MEAN], default=SOURCE_INVERSION, tooltip=
                               "'inversion identity': the identity x_T was inverted with (mean over frames where a "
                               "face was found; reproduces the input). 'mean of all frames': the plain mean of every "
                               "frame's identity, as the published code computes it."),
            ],
            outputs=[IdentityType.Output(display_name="identity", tooltip=
                                         "The clip identity; connect to Attribute Edit or straight to DDIM Decode.")],
        )

    @classmethod
    def execute(cls, latent, source) -> io.NodeOutput:
        from dva_model.model import mean_identity

        base = latent.identity if source == SOURCE_INVERSION else mean_identity(latent.z_id)
        return io.NodeOutput(Identity(base=base.float().cpu()))


def norm_input(tooltip: str):
    return io.Combo.Input("norm", options=list(NORMS), default="keep (exact at 0)", tooltip=tooltip)


class DVAAttributeEdit(io.ComfyNode):
    """Moves the identity along one attribute direction; chain several for several attributes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        from dva_model.constants import CELEBA_ATTRIBUTES

        return io.Schema(
            node_id="DVAAttributeEdit", display_name="DVA Attribute Edit", category=CATEGORY_EDIT,
            description=(
                "Edits the clip identity along an attribute direction of the classifier with the published "
                "formula (e.g. Mustache +0.25, Young -0.4; a negative No_Beard adds a beard). Chained edits are "
                "applied together, exactly as one multi-attribute edit."),
            inputs=[
                IdentityType.Input("identity", tooltip="The identity to edit (from Identity Average or another edit)."),
                Classifier.Input("classifier", tooltip="Attribute directions from DVA Classifier Loader."),
                io.Combo.Input("attribute", options=list(CELEBA_ATTRIBUTES), default="Mustache", tooltip=
                               "CelebA attribute to move along (ignored when custom_attribute is set)."),
                io.Float.Input("scale", default=0.25, min=-MAX_SCALE, max=MAX_SCALE, step=0.01, tooltip=
                               "Edit strength in units of sqrt(512) along the unit direction; negative removes "
                               "the attribute. 0.2-0.5 is typical."),
                norm_input("'keep': the edited identity keeps the input's length, so scale 0 reproduces the "
                           "input exactly. 'unit': the release's unit-length result."),
                io.String.Input("custom_attribute", default="", optional=True, tooltip=
                                "Name of a direction in a custom direction file; overrides attribute."),
            ],
            outputs=[IdentityType.Output(display_name="identity", tooltip=
                                         "The edited identity; chain another edit or connect to DDIM Decode.")],
        )

    @classmethod
    def execute(cls, identity, classifier, attribute, scale, norm, custom_attribute="") -> io.NodeOutput:
        name = custom_attribute.strip() or attribute
        classifier.index(name)  # an unknown name fails here, naming the known ones
        step = AttributeEditStep(classifier=classifier, attribute=name, scale=float(scale), norm=NORMS[norm])
        return io.NodeOutput(identity.with_edit(step))
