"""The one record type every dataset of reidfast.data yields."""

from __future__ import annotations

from typing import NamedTuple


class ReIDRecord(NamedTuple):
    """One image of a Re-ID dataset.

    Attributes:
        path: the image file (absolute, or as the dataset found it under its root).
        pid: the identity. Training splits are relabelled 0..N-1 in sorted order of the released
            identities; query and gallery keep the released identity (0 marks a Market-1501-style
            distractor, which matches no query).
        camid: the camera, 0-based.
    """

    path: str
    pid: int
    camid: int
