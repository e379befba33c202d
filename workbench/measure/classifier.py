"""An image classifier from a local transformers folder (``AutoModelForImageClassification`` + its image
processor, safetensors weights) as a concept scorer: the ResNet-50 Imagenette protocol of ESD and UCE.

An image counts for a concept when the concept's class is the top-1 prediction (the protocol's accuracy).
Class names come from the config's ``id2label`` or a labels file (one name per line, in index order);
a concept matches a label or any of its comma-separated synonyms ("gas pump" matches "gas pump, gasoline
pump, petrol pump, island dispenser"), case-insensitively.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..images import to_uint8
from ..world import ImageScorer
from .folders import check_weights, load_parts


class Classifier:
    def __init__(self, folder: Path, labels_file: Path | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        config = folder / "config.json"
        if not folder.is_dir() or not config.is_file():
            raise ValueError(f"classifier scorer: {str(folder)!r} is not a model folder (expected config.json, "
                             "model.safetensors and preprocessor_config.json)")
        check_weights("classifier scorer", folder)
        model, self.processor = load_parts(
            "classifier scorer", folder,
            lambda f: AutoModelForImageClassification.from_pretrained(f, use_safetensors=True),
            AutoImageProcessor.from_pretrained, what=" as an image classifier")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        n = self.model.config.num_labels
        if labels_file is not None:
            labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
            if len(labels) != n:
                raise ValueError(f"classifier scorer: {str(labels_file)!r} has {len(labels)} labels, the model "
                                 f"has {n} classes")
        else:
            id2label = self.model.config.id2label
            labels = [str(id2label[i]) for i in range(n)]
        self.labels = labels

    def index(self, concept: str) -> int:
        want = concept.strip().lower()
        for i, label in enumerate(self.labels):
            if want == label.lower() or want in (s.strip().lower() for s in label.split(",")):
                return i
        raise ValueError(f"classifier scorer: no class named {concept!r} (classes: "
                         f"{', '.join(self.labels[:5])}{', ...' if len(self.labels) > 5 else ''})")

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(to_uint8(images)), return_tensors="pt").pixel_values
        return self.model(pixel_values=pixels.to(self.device)).logits.float().softmax(-1).cpu()


@lru_cache(maxsize=4)
def load_classifier(folder: str, labels_file: str | None = None, device: str = "cpu") -> Classifier:
    return Classifier(Path(folder), Path(labels_file) if labels_file else None, device)


def classifier_scorer(folder: str | Path, labels_file: str | Path | None = None,
                      device: str | torch.device = "cpu"):
    """concept -> images -> 1.0 where the concept's class is the top-1 prediction, else 0.0."""
    clf = load_classifier(str(folder), str(labels_file) if labels_file else None, str(device))

    def reads(concept: str) -> ImageScorer:
        i = clf.index(concept)
        return lambda images: (clf.probabilities(images).argmax(-1) == i).float()

    return reads

