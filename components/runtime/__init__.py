"""Process-level plumbing shared by stages: Ray connection, MLflow set-up."""
