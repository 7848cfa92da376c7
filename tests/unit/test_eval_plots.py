"""Unit tests for components.evaluation.plots: each figure lands as a real PNG; bad input is refused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.evaluation.plots import (
    confusion_matrix,
    plot_confusion_matrix,
    plot_recall_bars,
    plot_top_images,
)

REPO = Path(__file__).resolve().parents[2]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # a truncated file fails here, not just at the header
        return image.size


# --- recall bars ------------------------------------------------------------------------------------------

RECALL = {
    "image_to_text/R@1": 0.42,
    "image_to_text/R@5": 0.71,
    "image_to_text/R@10": 0.95,
    "text_to_image/R@1": 0.33,
    "text_to_image/R@5": 0.60,
    "text_to_image/R@10": 0.74,
    "mean_recall": 0.625,
}


def test_recall_bars_write_png_in_nested_folder(tmp_path):
    out = plot_recall_bars(RECALL, tmp_path / "a" / "b" / "recall.png", title="Zero-shot retrieval")
    assert out == tmp_path / "a" / "b" / "recall.png"
    width, height = _png_size(out)
    assert 300 <= width <= 2000 and 200 <= height <= 1000


def test_recall_bars_accept_mlflow_names(tmp_path):
    mlflow_style = {f"retrieval/{k.replace('@', '_at_')}": v for k, v in RECALL.items()}
    out = plot_recall_bars(mlflow_style, str(tmp_path / "recall.png"))
    assert isinstance(out, Path)
    _png_size(out)


def test_recall_bars_accept_one_direction_and_full_recall(tmp_path):
    _png_size(plot_recall_bars({"text_to_image/R@1": 1.0, "acc1": 0.5}, tmp_path / "r.png"))


def test_recall_bars_refuse_input_without_recall_keys(tmp_path):
    with pytest.raises(ValueError, match="no Recall@K metrics"):
        plot_recall_bars({"mean_recall": 0.5, "acc1": 0.3}, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_recall_bars_refuse_values_outside_unit_interval(tmp_path, value):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        plot_recall_bars({"image_to_text/R@1": value}, tmp_path / "r.png")


def test_recall_bars_refuse_conflicting_duplicates(tmp_path):
    with pytest.raises(ValueError, match="different image_to_text R@1"):
        plot_recall_bars({"val/image_to_text/R@1": 0.2, "test/image_to_text/R_at_1": 0.3}, tmp_path / "r.png")


# --- confusion matrix -------------------------------------------------------------------------------------


def test_confusion_matrix_counts_hand_made_case():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 0]])
    matrix = confusion_matrix(labels, predictions, num_classes=3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == len(labels)


def test_confusion_matrix_keeps_absent_classes_and_accepts_empty_input():
    np.testing.assert_array_equal(confusion_matrix(np.array([1]), np.array([1]), 3)[1], [0, 1, 0])
    assert confusion_matrix(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2).sum() == 0


@pytest.mark.parametrize(
    ("labels", "predictions", "num_classes", "message"),
    [
        ([0, 1], [0], 2, "predictions must be 1-D with 2 entries"),
        ([0, 3], [0, 1], 3, r"labels holds indices outside \[0, 3\)"),
        ([0, 1], [0, -1], 2, "predictions holds indices outside"),
        ([0.0, 1.0], [0, 1], 2, "integer indices"),
        ([0, 1], [0, 1], 0, "num_classes must be a positive integer"),
        ([0, 1], [0, 1], 2.0, "num_classes must be a positive integer"),
    ],
)
def test_confusion_matrix_refuses_bad_input(labels, predictions, num_classes, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(labels), np.array(predictions), num_classes)


def test_plot_confusion_matrix_small_annotated(tmp_path):
    matrix = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])  # an empty row must not turn into NaN
    out = plot_confusion_matrix(matrix, ["cat", "dog", "a very long class name indeed"], tmp_path / "cm.png")
    width, height = _png_size(out)
    assert 300 <= width <= 1600 and 300 <= height <= 1600
    _png_size(plot_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "counts.png", normalise=False, title="n"))


def test_plot_confusion_matrix_1000_classes_is_bounded(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    labels = rng.integers(0, n, size=20_000)
    predictions = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, n, size=labels.shape))
    matrix = confusion_matrix(labels, predictions, n)
    start = time.perf_counter()
    out = plot_confusion_matrix(matrix, [f"class {i}" for i in range(n)], tmp_path / "cm1000.png", title="ImageNet")
    elapsed = time.perf_counter() - start
    width, height = _png_size(out)
    assert width <= 1600 and height <= 1600
    assert out.stat().st_size < 5_000_000
    assert elapsed < 20.0, f"1000-class confusion matrix took {elapsed:.1f}s"


@pytest.mark.parametrize(
    ("matrix", "names", "message"),
    [
        (np.zeros((2, 3)), ["a", "b"], "must be square"),
        (np.zeros(4), ["a"], "must be square"),
        (np.zeros((3, 3)), ["a", "b"], "3x3 but 2 class names"),
        (np.zeros((0, 0)), [], "no classes"),
        (-np.ones((2, 2)), ["a", "b"], "non-negative"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ["a", "b"], "finite"),
    ],
)
def test_plot_confusion_matrix_refuses_bad_shapes(tmp_path, matrix, names, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(matrix, names, tmp_path / "cm.png")


# --- top images -------------------------------------------------------------------------------------------


def _images(k: int) -> list[Image.Image]:
    modes = ["RGB", "L", "RGBA", "P"]
    return [Image.new(modes[i % len(modes)], (64 + 16 * i, 48), color=(40 * i) % 255) for i in range(k)]


def test_plot_top_images_grid(tmp_path):
    queries = ["a red bicycle leaning against a wall", "a dog " * 40]  # second one needs wrapping/truncation
    images = [_images(5), _images(5)]
    scores = [[0.91, 0.85, 0.8, np.float32(0.7), 0.5], [0.4, 0.3, 0.2, 0.1, float("nan")]]
    hits = [[True, False, False, False, False], [False, False, np.bool_(True), False, False]]
    out = plot_top_images(queries, images, scores, hits, tmp_path / "top" / "grid.png", title="text→image")
    width, height = _png_size(out)
    assert 800 <= width <= 2000 and 300 <= height <= 1000


def test_plot_top_images_allows_shorter_rows(tmp_path):
    out = plot_top_images(
        ["q1", "q2"], [_images(3), _images(1)], [[0.3, 0.2, 0.1], [0.5]], [[1, 0, 0], [0]], tmp_path / "g.png"
    )
    _png_size(out)


@pytest.mark.parametrize(
    ("queries", "images", "scores", "hits", "message"),
    [
        (["q"], [_images(2), _images(2)], [[0, 0]], [[0, 0]], "images has 2 rows but there are 1 queries"),
        (["q"], [_images(2)], [[0.1]], [[True, False]], "query 0 has 2 images, 1 scores and 2 hits"),
        (["q"], [_images(2)], [[0.1, 0.2]], [[True]], "query 0 has 2 images, 2 scores and 1 hits"),
        (["q"], [[]], [[]], [[]], "query 0 has no retrieved images"),
        ([], [], [], [], "at least one query"),
    ],
)
def test_plot_top_images_refuses_mismatched_input(tmp_path, queries, images, scores, hits, message):
    with pytest.raises(ValueError, match=message):
        plot_top_images(queries, images, scores, hits, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_plot_top_images_refuses_wrong_types(tmp_path):
    with pytest.raises(TypeError, match=r"images\[0\]\[0\] must be a PIL image, got str"):
        plot_top_images(["q"], [["not an image"]], [[0.1]], [[True]], tmp_path / "g.png")
    with pytest.raises(TypeError, match=r"scores\[0\]\[0\] must be a number"):
        plot_top_images(["q"], [_images(1)], [["high"]], [[True]], tmp_path / "g.png")


# --- import hygiene ---------------------------------------------------------------------------------------


def test_import_does_not_load_pyplot():
    code = (
        "import sys\n"
        "import components.evaluation.plots\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_plotting_does_not_load_pyplot(tmp_path):
    # Drawing goes through Figure + Agg only; a pyplot import would pick a global backend.
    code = (
        "import sys\n"
        "from components.evaluation.plots import plot_recall_bars\n"
        f"plot_recall_bars({{'image_to_text/R@1': 0.5}}, {str(tmp_path / 'r.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    _png_size(tmp_path / "r.png")
