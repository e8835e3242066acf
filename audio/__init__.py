"""Audio on disk: reading 16 kHz crops from any format, lists of files, and the signal effects of augmentation."""
