"""Importers of other toolkits' released speaker-embedding models (wespeaker, 3D-Speaker, SpeechBrain) and of the
ReDimNet and ReDimNet2 authors' releases."""
from __future__ import annotations

from importers import redimnet, redimnet2, speechbrain, threedspeaker, wespeaker
from importers.release_files import ImportedRelease, ReleaseError

READERS = {"wespeaker": wespeaker.read, "3dspeaker": threedspeaker.read, "speechbrain": speechbrain.read,
           "redimnet": redimnet.read, "redimnet2": redimnet2.read}

__all__ = ["READERS", "ImportedRelease", "ReleaseError"]
