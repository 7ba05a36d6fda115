"""Pictures of raw media items for the adapters' ``preview(data, ext)`` hooks (``inspect --render``).

Plain Pillow and torch, imported only when a picture is drawn; sized to fit a 940-pixel-wide column
(the inspector's page is 960 wide with 10-pixel margins).
"""
from __future__ import annotations

import math

#: side of the square an image preview is scaled to fit (up or down, aspect kept)
THUMB = 192
#: side of the square each video frame is scaled to fit in a contact sheet
FRAME = 112
#: width and height of a spectrogram picture
SPECTROGRAM = (940, 160)


def contact_sheet(pictures: list, size: int, cols: int = 8):
    """PIL pictures scaled to fit ``size`` square (up or down, aspect kept), ``cols`` to a row, each in a
    cell 4 pixels larger than the largest picture: one RGB image."""
    from PIL import Image, ImageOps

    if not pictures:
        raise ValueError("contact_sheet needs at least one picture")
    thumbs = [ImageOps.contain(p.convert("RGB"), (size, size)) for p in pictures]
    cols, w, h = min(cols, len(thumbs)), max(t.width for t in thumbs) + 4, max(t.height for t in thumbs) + 4
    sheet = Image.new("RGB", (cols * w, math.ceil(len(thumbs) / cols) * h), "white")
    for i, t in enumerate(thumbs):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    return sheet


def spectrogram(wave, sr: int, size: tuple[int, int] = SPECTROGRAM):
    """Mono samples at rate ``sr`` -> their log-mel spectrogram (64 mels, 25 ms windows every 10 ms, in dB,
    the top 80 dB shown) as a colour RGB image of ``size``, low frequencies at the bottom."""
    import torch
    import torchaudio
    from PIL import Image, ImageOps

    mel = torchaudio.transforms.MelSpectrogram(sr, n_fft=max(16, round(0.025 * sr)),
                                               hop_length=max(1, round(0.01 * sr)), n_mels=64)
    mel = mel(torch.as_tensor(wave, dtype=torch.float32))
    db = 10 * mel.clamp(min=1e-10).log10()
    db = db.clamp(min=float(db.max()) - 80)
    gray = ((db - db.min()) / (db.max() - db.min() + 1e-9) * 255).to(torch.uint8).flip(0).numpy()
    img = Image.fromarray(gray, "L").resize(size)
    return ImageOps.colorize(img, black="#000028", white="#ffe060", mid="#b02060")
