"""The ``align`` command line: one verb per lifecycle stage (CLI -> flows -> components)."""
