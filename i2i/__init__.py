"""i2i: image-to-image translation with limited data."""

__version__ = "0.1.0"
