"""Errors the library raises for problems a user can fix."""


class UserError(ValueError):
    """Bad input (file, option, video): the message is one sentence saying what and how to fix it."""


class ModelFileError(UserError):
    """A model file is missing, truncated, foreign or of an unsupported layout."""


class NoFaceError(UserError):
    """No face was found where one is required."""
