"""Preparing data: VoxCeleb downloads and conversion, MUSAN and RIRs, train lists, and the offline demo corpus."""
