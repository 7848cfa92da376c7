"""The MLflow pyfunc flavour of an ALIGN model: text or image bytes in, embeddings out.

Logged as "models from code" (``pyfunc_entry.py``) so loading it runs our own source, not an unpickled
object; weights are safetensors inside the model's artifacts.
"""

from __future__ import annotations

import io
import warnings

import mlflow.pyfunc
import numpy as np

ARTIFACT_KEY = "align"


# MLflow warns at class creation when ``predict`` lacks type hints; our signature is explicit instead.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*type hints.*")

    class AlignPyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context) -> None:
            from components.model.artifact import load_encoder

            self.encoder = load_encoder(context.artifacts[ARTIFACT_KEY])

        def predict(self, context, model_input, params=None) -> np.ndarray:
            """``text`` column -> text embeddings; else ``image`` column (encoded bytes) -> image embeddings."""
            from PIL import Image

            columns = getattr(model_input, "columns", [])
            if "text" in columns and model_input["text"].notna().all():
                return self.encoder.encode_texts([str(t) for t in model_input["text"]])
            if "image" in columns:
                return self.encoder.encode_images([Image.open(io.BytesIO(b)).convert("RGB") for b in model_input["image"]])
            raise ValueError("model input needs a 'text' column (strings) or an 'image' column (encoded image bytes)")
