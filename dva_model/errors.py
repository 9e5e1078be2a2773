"""Errors the library raises for problems a user can fix, and the wording of a list of choices."""

from typing import Iterable


class UserError(ValueError):
    """Bad input (file, option, video): the message is one sentence saying what and how to fix it."""


class ModelFileError(UserError):
    """A model file is missing, truncated, foreign or of an unsupported layout."""


class NoFaceError(UserError):
    """No face was found where one is required."""


def one_of(names: Iterable[str]) -> str:
    """"a, b or c": the allowed names of a closed option set, for error messages."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
