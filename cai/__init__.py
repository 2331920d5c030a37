"""cai: Constitutional AI / RLAIF toolkit."""

__version__ = "0.1.0"
