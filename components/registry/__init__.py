"""MLflow model logging, the registry (aliases champion/challenger) and the promotion gate."""
