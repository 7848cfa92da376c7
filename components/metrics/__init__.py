"""Scores on embeddings and their names, in numpy alone, below the stages that compute them.

Training's validation and evaluation report the same Recall@K under the same MLflow names, and the report
reads those names back: one definition here keeps them equal. Nothing in components/ is imported here.
"""
