"""Importers of other toolkits' released speaker-embedding models (wespeaker, 3D-Speaker, SpeechBrain)."""
from __future__ import annotations

from importers import speechbrain, threedspeaker, wespeaker
from importers.release_files import ImportedRelease, ReleaseError

READERS = {"wespeaker": wespeaker.read, "3dspeaker": threedspeaker.read, "speechbrain": speechbrain.read}

__all__ = ["READERS", "ImportedRelease", "ReleaseError"]
