"""MLflow "models from code" entry point; MLflow executes this file when the model is loaded."""

import mlflow

from components.registry.pyfunc import AlignPyfunc

mlflow.models.set_model(AlignPyfunc())
