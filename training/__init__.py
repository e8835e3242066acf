"""The training of a SpeakerNet: the trainer that owns a run, its epoch meter and its parameter groups."""
