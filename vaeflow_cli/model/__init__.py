"""The model: the VAE with a flow prior and a Glow layer in pixel space (``vaeflow.VAEFlow``), its
distributions, the flow building blocks components share, and sampling from it."""
