"""The model a notebook shows: the reader's own, when notebook 03 trained one, else the pretrained one.

Notebooks 04 and 05 sample "your model" if there is one and real flowers if there is not, and
never train behind the reader's back; :func:`load_trained_or_pretrained` makes that choice and
says which in one printed line.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..plumbing.checkpoint import load_model
from ..plumbing.errors import CheckpointError
from .pretrained import load_pretrained


def load_trained_or_pretrained(checkpoint: str | os.PathLike, pretrained: str = "flowers32", device="cpu"):
    """The EMA model notebook 03 saved at ``checkpoint`` if there is a readable one, else the
    pretrained weights ``pretrained``; prints one line saying which. Never trains.

    This is how notebooks 04 and 05 show the reader's own model when they trained one, and real
    flowers when they did not. Returns ``(model, schedule, config)`` like :func:`load_model`.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        try:
            model, schedule, config = load_model(checkpoint, device)
            print(f"Showing the model notebook 03 trained ({checkpoint}: {config.num_epochs} epochs at "
                  f"{config.img_size} px).")
            return model, schedule, config
        except CheckpointError as err:
            print(f"Not using {checkpoint}: {err}")
    model, schedule, config = load_pretrained(pretrained, device)
    seen = model.card.get("images_seen")
    print(f"Showing the pretrained {pretrained} model ({config.img_size} px"
          + (f", {seen:,} training images seen" if isinstance(seen, int) else "")
          + f"); run notebook 03 to train your own into {checkpoint}.")
    return model, schedule, config
