"""Data stage: the synthetic corpus, ingestion and ALIGN's filters."""
