"""Experiments: a grid or list of config overrides run as MLflow child runs of one parent, and their comparison."""
