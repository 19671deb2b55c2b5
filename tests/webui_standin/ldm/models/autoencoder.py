"""Stand-in for ``ldm/models/autoencoder.py::AutoencoderKL``: ``encode(x)`` returns the posterior
(a ``DiagonalGaussianDistribution`` with ``sample()``/``mode()``), here a diffusers ``AutoencoderKL``'s."""

from torch import nn


class AutoencoderKL(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def encode(self, x):
        return self.vae.encode(x).latent_dist

    def decode(self, z):
        return self.vae.decode(z).sample
