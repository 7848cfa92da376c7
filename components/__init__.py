"""ALIGN lifecycle library: one folder per stage, plus the shared config tree."""
