"""The registered final detector as an MLflow pyfunc model defined from code (no pickle).

MLflow's "models from code": ``tasks.tracking.StageRun.register_detector`` logs this file
as the model's definition, the checkpoint as the artifact ``checkpoint`` and ``model/`` as
code. Loading runs this file and reads the checkpoint with ``torch.load(weights_only=True)``
(``model.checkpoint``), so nothing is unpickled.

    model = mlflow.pyfunc.load_model("models:/NAME/VERSION")
    model.predict(["img.jpg", ...])   # image paths
    # -> one list per image of {"class", "score", "box": [x1, y1, x2, y2]} (0-based pixels)

Without MLflow's Python API: ``python -m model.detect --checkpoint models:/NAME/VERSION``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class RegisteredDetector(PythonModel):
    """Images (paths) -> detections above ``params["score_threshold"]`` (default 0.05)."""

    def load_context(self, context: Any) -> None:
        from model.checkpoint import load_checkpoint

        self.model, _ = load_checkpoint(context.artifacts["checkpoint"], map_location="cpu")
        self.model.eval()

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[Any]:
        from model.data.images import load_image_rgb
        from model.data.transforms import prepare_image
        from model.detect import detections_to_json

        threshold = float((params or {}).get("score_threshold", 0.05))
        cfg = self.model.cfg
        found = []
        for path in model_input:
            image, scale = prepare_image(load_image_rgb(Path(path)), cfg.min_size, cfg.max_size)
            found.append(detections_to_json(self.model.detect(image, scale), cfg.class_names, threshold))
        return found


mlflow.models.set_model(RegisteredDetector())
