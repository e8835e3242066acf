"""Flags and YAML configs turned into one typed settings object with a section per part."""
