"""Refusal as a detector: does the model refuse exactly when the input is not speech?

Positives are held-out inaudible inputs (random sound tokens, notebook 05), negatives held-out
spoken questions. A reply counts as a refusal when ``is_refusal(reply)`` says so (by default
``ichigo_lib.data.refusals.is_refusal``, the classifier phase 3's refusal data is written with).

precision = refusals on inaudible / all refusals; recall = refusals on inaudible / inaudible
inputs. Precision is None when the model never refuses (undefined, not 0 or 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def default_classifier() -> Callable[[str], bool]:
    from ichigo_lib.data.refusals import is_refusal

    return is_refusal


def refusal_scores(
    inaudible_replies: Sequence[str],
    speech_replies: Sequence[str],
    is_refusal: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Confusion counts, precision, recall and F1 of refusing on inaudible vs speech inputs."""
    if not inaudible_replies or not speech_replies:
        raise ValueError(
            f"need replies to both kinds of input, got {len(inaudible_replies)} inaudible and "
            f"{len(speech_replies)} speech"
        )
    is_refusal = is_refusal or default_classifier()
    tp = sum(bool(is_refusal(r)) for r in inaudible_replies)
    fp = sum(bool(is_refusal(r)) for r in speech_replies)
    fn, tn = len(inaudible_replies) - tp, len(speech_replies) - fp
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / len(inaudible_replies)
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "inaudible_refusal_rate": recall,
        "speech_false_refusal_rate": fp / len(speech_replies),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
