"""Dashboards: a static HTML experiment report built from MLflow, and where the live UIs are."""
