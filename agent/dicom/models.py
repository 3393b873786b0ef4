"""The Query/Retrieve information models and the levels of the hierarchy (PS3.4 C.3)."""

from __future__ import annotations

from enum import Enum


class Level(str, Enum):
    """A level of the query/retrieve hierarchy, named as in Query/Retrieve Level."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)  # top first


class Model(str, Enum):
    """The three Query/Retrieve information models."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"
    PATIENT_STUDY_ONLY = "PATIENT_STUDY_ONLY"

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels this model has, top first."""
        return _MODEL_LEVELS[self]


_MODEL_LEVELS = {
    Model.PATIENT_ROOT: LEVELS,
    Model.STUDY_ROOT: LEVELS[1:],
    Model.PATIENT_STUDY_ONLY: LEVELS[:2],
}
