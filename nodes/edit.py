"""Identity nodes: the clip's time-invariant identity, and attribute edits of it (chainable)."""

from .types import CLASSIFIER, IDENTITY, LATENT, Identity

SOURCE_INVERSION = "inversion identity"
SOURCE_MEAN = "mean of all frames"
NORMS = {"keep (exact at 0)": "keep", "unit (as released)": "unit"}
MAX_SCALE = 5.0


class DVAIdentityAverage:
    """The identity to decode with: the one the clip was inverted with (its mean ArcFace feature)."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Builds the clip's time-invariant identity (DVA_IDENTITY) from an encoding. Decoding with it "
        "unedited reproduces the input; edit nodes change it for every frame at once."
    )
    RETURN_TYPES = (IDENTITY,)
    RETURN_NAMES = ("identity",)
    OUTPUT_TOOLTIPS = ("The clip identity; connect to Attribute Edit or straight to DDIM Decode.",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": (LATENT, {"tooltip": "The clip's encoding from DVA Encode or DVA Load Latent."}),
            "source": ([SOURCE_INVERSION, SOURCE_MEAN], {"default": SOURCE_INVERSION, "tooltip":
                       "'inversion identity': the identity x_T was inverted with (mean over frames where a "
                       "face was found; reproduces the input). 'mean of all frames': the plain mean of every "
                       "frame's identity, as the published code computes it."}),
        }}

    @classmethod
    def execute(cls, latent, source):
        from dva_model.model import mean_identity

        base = latent.identity if source == SOURCE_INVERSION else mean_identity(latent.z_id)
        return (Identity(base=base.float().cpu()),)


class DVAAttributeEdit:
    """Moves the identity along one attribute direction; chain several for several attributes."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Edits the clip identity along an attribute direction of the classifier with the published "
        "formula (e.g. Mustache +0.25, Young -0.4; a negative No_Beard adds a beard). Chained edits are "
        "applied together, exactly as one multi-attribute edit."
    )
    RETURN_TYPES = (IDENTITY,)
    RETURN_NAMES = ("identity",)
    OUTPUT_TOOLTIPS = ("The edited identity; chain another edit or connect to DDIM Decode.",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        from dva_model.constants import CELEBA_ATTRIBUTES

        return {
            "required": {
                "identity": (IDENTITY, {"tooltip": "The identity to edit (from Identity Average or another edit)."}),
                "classifier": (CLASSIFIER, {"tooltip": "Attribute directions from DVA Classifier Loader."}),
                "attribute": (list(CELEBA_ATTRIBUTES), {"default": "Mustache", "tooltip":
                              "CelebA attribute to move along (ignored when custom_attribute is set)."}),
                "scale": ("FLOAT", {"default": 0.25, "min": -MAX_SCALE, "max": MAX_SCALE, "step": 0.01, "tooltip":
                          "Edit strength in units of sqrt(512) along the unit direction; negative removes "
                          "the attribute. 0.2-0.5 is typical."}),
                "norm": (list(NORMS), {"default": "keep (exact at 0)", "tooltip":
                         "'keep': the edited identity keeps the input's length, so scale 0 reproduces the "
                         "input exactly. 'unit': the release's unit-length result."}),
            },
            "optional": {
                "custom_attribute": ("STRING", {"default": "", "tooltip":
                                     "Name of a direction in a custom direction file; overrides attribute."}),
            },
        }

    @classmethod
    def execute(cls, identity, classifier, attribute, scale, norm, custom_attribute=""):
        name = custom_attribute.strip() or attribute
        classifier.index(name)  # an unknown name fails here, naming the known ones
        from dva_model.edit.identity import AttributeEdit

        step = AttributeEdit(classifier=classifier, attribute=name, scale=float(scale), norm=NORMS[norm])
        return (identity.with_edit(step),)
