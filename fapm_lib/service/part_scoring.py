"""What the micro-batcher runs: one batch of decoded parts scored by the live model.

The batch takes ``slot.current`` once, so all of its parts are scored by one model, and each
answer names it. Scoring is the library's (:func:`~fapm_lib.decisions.results.predict_images`,
as ``fapm predict``); an explanation, when asked for, is
:func:`~fapm_lib.decisions.nearest_patch.explain_images` of the parts that asked, by the same model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from ..decisions.nearest_patch import Explanation, explain_images
from ..decisions.results import Result, predict_images
from ..errors import FAPMError
from .model_slot import LoadedModel, ModelSlot


@dataclass(frozen=True)
class Part:
    """One decoded image to score, and whether its answer explains it."""

    image: Image.Image
    explain: bool = False


@dataclass
class ScoredPart:
    """A part's result, the model that produced it, and its explanation (or why there is none)."""

    result: Result
    model: LoadedModel
    explanation: Explanation | None = None
    explain_error: str | None = None


def score_parts(slot: ModelSlot, parts: Sequence[Part]) -> list[ScoredPart]:
    """Score ``parts`` with the live model (taken once): one :class:`ScoredPart` each."""
    loaded = slot.current
    results = predict_images(loaded.detector, [part.image for part in parts])
    scored = [ScoredPart(result, loaded) for result in results]
    asking = [i for i, part in enumerate(parts) if part.explain]
    if asking:
        try:
            explanations = explain_images(loaded.detector, [parts[i].image for i in asking])
        except FAPMError as exc:
            for i in asking:
                scored[i].explain_error = str(exc)
        else:
            for i, why in zip(asking, explanations):
                scored[i].explanation = why
    return scored
