"""Training examples from a prepared dataset, and their cached latents and conditionings.

The VAE and the text encoder are frozen, so each image's latent and each caption's
conditioning is computed once, before the loop; a training step then costs only the UNet's
forward and backward pass.
"""

import csv
import dataclasses
import logging
import pathlib

from ..errors import ConfigError, InputError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingExample:
    """One image file and its caption."""

    image_path: pathlib.Path
    caption: str


def load_examples(train_data_dir, metadata_path=None):
    """Read ``metadata.csv`` (``file_name,text``) of a prepared dataset.

    Args:
        train_data_dir (`str | os.PathLike`): dataset folder (``prepare``'s output).
        metadata_path (`str | os.PathLike`, *optional*): defaults to ``<dir>/metadata.csv``.

    Returns:
        `list[TrainingExample]`

    Raises:
        ConfigError: the folder or metadata file is missing or malformed; rows are named by
            their number, never by caption text.
    """
    if not train_data_dir:
        raise ConfigError("train_data_dir is not set; point it at a folder made by 'python -m lib_lora_train prepare'")
    folder = pathlib.Path(train_data_dir)
    metadata = pathlib.Path(metadata_path) if metadata_path else folder / "metadata.csv"
    if not folder.is_dir():
        raise ConfigError(f"train_data_dir {folder} is not a folder; run 'python -m lib_lora_train prepare' first")
    if not metadata.is_file():
        raise ConfigError(f"metadata_path {metadata} does not exist; a prepared dataset has metadata.csv")
    with open(metadata, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"file_name", "text"} <= set(rows[0]):
        raise ConfigError(f"{metadata.name} must have the columns file_name,text (Hugging Face imagefolder layout)")
    examples = [_example(folder, number, row) for number, row in enumerate(rows, start=2)]
    if not examples:
        raise ConfigError(f"{metadata.name} lists no images; the dataset is empty")
    return examples


def _example(folder, line, row):
    path = (folder / row["file_name"]).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise InputError(f"metadata.csv line {line}: file_name points outside the dataset folder", code="bad_metadata")
    if not path.is_file():
        raise InputError(f"metadata.csv line {line}: image file is missing", code="bad_metadata")
    return TrainingExample(path, row["text"] or "")


def load_pixels(path, resolution, flip=False):
    """An image as a (3, H, W) float32 tensor in [-1, 1], square at ``resolution``."""
    import numpy as np
    import torch
    from PIL import Image

    from ..dataset.images import fit_square

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    square = np.asarray(fit_square(array, resolution, "pad"), dtype=np.float32)
    if flip:
        square = square[:, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)
    return tensor / 127.5 - 1.0


@dataclasses.dataclass
class EncodedDataset:
    """Latents (N, C, h, w) and conditionings (N, T, D), float32 on the CPU.

    ``flipped_latents`` is set when random flips were asked for: both versions are
    encoded once, and each step picks one per sample.
    """

    latents: object
    conditionings: object
    flipped_latents: object = None

    def __len__(self):
        return self.latents.shape[0]

    def latents_for(self, indices, generator):
        """Latents of a batch (a random half flipped when flips were cached)."""
        import torch

        latents = self.latents[indices]
        if self.flipped_latents is not None:
            flip = torch.rand(len(indices), generator=generator) < 0.5
            latents = torch.where(flip.view(-1, 1, 1, 1), self.flipped_latents[indices], latents)
        return latents

    def conditionings_for(self, indices):
        """Conditionings of a batch."""
        return self.conditionings[indices]


@dataclasses.dataclass
class StreamingDataset:
    """Encodes every batch again at every step (``cache_latents: false``).

    Slower, and only useful to compare against the cached path or when the dataset does
    not fit in memory; the frozen encoders still run without gradients.
    """

    host: object
    examples: list
    resolution: int
    random_flip: bool = False

    def __len__(self):
        return len(self.examples)

    def latents_for(self, indices, generator):
        import torch

        flips = (torch.rand(len(indices), generator=generator) < 0.5).tolist() if self.random_flip else [False] * len(indices)
        with torch.no_grad():
            pixels = torch.stack([load_pixels(self.examples[i].image_path, self.resolution, f)
                                  for i, f in zip(indices, flips)])
            return self.host.encode_images(pixels.to(self.host.device, self.host.dtype)).float().cpu()

    def conditionings_for(self, indices):
        import torch

        with torch.no_grad():
            return self.host.encode_prompts([self.examples[i].caption for i in indices]).float().cpu()


def encode_dataset(host, examples, resolution, batch_size=4, random_flip=False):
    """Run the frozen VAE and text encoder once over every example."""
    import torch

    with torch.no_grad():
        latents = _encode_images(host, examples, resolution, batch_size, flip=False)
        flipped = _encode_images(host, examples, resolution, batch_size, flip=True) if random_flip else None
        unique = sorted({example.caption for example in examples})
        encoded = {}
        for start in range(0, len(unique), batch_size):
            chunk = unique[start:start + batch_size]
            for caption, tensor in zip(chunk, host.encode_prompts(chunk).float().cpu()):
                encoded[caption] = tensor
        conditionings = torch.stack([encoded[example.caption] for example in examples])
    logger.info("encoded %d images and %d distinct captions once", len(examples), len(unique))
    return EncodedDataset(latents, conditionings, flipped)


def _encode_images(host, examples, resolution, batch_size, flip):
    import torch

    chunks = []
    for start in range(0, len(examples), batch_size):
        pixels = torch.stack([load_pixels(e.image_path, resolution, flip) for e in examples[start:start + batch_size]])
        chunks.append(host.encode_images(pixels.to(host.device, host.dtype)).float().cpu())
    return torch.cat(chunks)
