"""Measurement on images: concept scorers loaded from local folders, image-set metrics and prompt suites.

Every concept scorer is a :class:`Scorer`: called with a concept it returns that concept's
``images -> (B,) probabilities`` function, so evaluation and faithful tracing take any of them. Weights come
only from a path the user names (or the toy world's shipped folders); nothing is fetched.

    load_scorer("clip:/models/clip-vit-l:a photo,a painting", world=wb.world)
"""

from .scorers import SCORER_SPECS, Scorer, load_scorer

__all__ = ["SCORER_SPECS", "Scorer", "load_scorer"]
