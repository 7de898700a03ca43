"""Classification metrics: top-k accuracy, mean class accuracy, confusion matrix (PNG + data) and
per-class report (scikit-learn), for one stream's scores over a whole evaluation set.

All accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows of ``scores [N, C]`` whose true label is among the ``k`` highest (k capped at C)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def mean_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Average over the classes present in ``labels`` of each class's recall (UCF101's "mean class accuracy")."""
    if len(labels) == 0:
        return float("nan")
    counts = torch.bincount(labels, minlength=num_classes).float()
    hits = torch.bincount(labels[preds == labels], minlength=num_classes).float()
    present = counts > 0
    return (hits[present] / counts[present]).mean().item()


def summary(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"top1", "top5", "mean_class_acc"}`` for ``scores [N, C]`` (top5 is top-min(5, C))."""
    scores, labels = scores.float().cpu(), labels.long().cpu()
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class_acc": mean_class_accuracy(scores.argmax(dim=1), labels, scores.shape[1]),
    }


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix ``[true, predicted]`` of counts, int64 ``[C, C]``."""
    from sklearn.metrics import confusion_matrix  # scikit-learn and matplotlib load slowly: only at test time

    return confusion_matrix(labels, preds, labels=np.arange(num_classes)).astype(np.int64)


def plot_confusion(cm: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG (matplotlib, Agg), counts written in the cells when few classes."""
    import matplotlib  # only when a confusion matrix is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8 if n > 20 else 10)
    ax.set_yticks(range(n), class_names, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | Path, stream: str, scores: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> dict[str, float]:
    """Write ``<stream>_confusion.png``, ``<stream>_confusion.json`` (matrix + class names) and
    ``<stream>_report.{txt,json}`` (scikit-learn classification_report) into ``out_dir``;
    return :func:`summary`."""
    from sklearn.metrics import classification_report  # only at test time

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y = labels.long().cpu().numpy()
    pred = scores.float().argmax(dim=1).cpu().numpy()
    ids = np.arange(len(class_names))
    cm = confusion(y, pred, len(class_names))
    plot_confusion(cm, class_names, out_dir / f"{stream}_confusion.png", title=f"{stream} (rows: true class)")
    (out_dir / f"{stream}_confusion.json").write_text(json.dumps({"classes": class_names, "matrix": cm.tolist()}))
    kw = dict(labels=ids, target_names=class_names, zero_division=0)
    (out_dir / f"{stream}_report.txt").write_text(classification_report(y, pred, digits=3, **kw))
    (out_dir / f"{stream}_report.json").write_text(
        json.dumps(classification_report(y, pred, output_dict=True, **kw), indent=1)
    )
    return summary(scores, labels)
