"""Prefect flows: orchestration only. Every task calls one function of ``components``."""
