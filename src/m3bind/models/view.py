"""A modality in the shared space: its image model + binding head, and a text encoder."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from m3bind.models.base import ModalityModel


class SharedSpaceView:
    """Images through ``image_model`` + ``head``, texts through ``text_encoder`` (anything with
    ``encode_texts``: the modality's own bound text side, or the SESKD student). Satisfies
    :class:`m3bind.models.base.EncoderView`; the temperature is the image model's."""

    def __init__(self, image_model: ModalityModel, head: nn.Module, text_encoder):
        self.image_model = image_model
        self.head = head
        self.text_encoder = text_encoder

    def eval(self) -> SharedSpaceView:
        self.image_model.eval()
        self.head.eval()
        self.text_encoder.eval()
        return self

    def encode_image(self, images: Tensor) -> Tensor:
        return self.head(self.image_model.encode_image(images.to(self.image_model.device)))

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        return self.text_encoder.encode_texts(list(texts))

    def logit_scale(self) -> Tensor:
        return self.image_model.logit_scale()


def native_view(model: ModalityModel) -> SharedSpaceView:
    """A modality model in its own (native) space: no head, its own text encoder."""
    return SharedSpaceView(model, nn.Identity(), model)
