"""meshlib's version, in a module of its own: modules below the package root read it."""

__version__ = "0.1.0.dev0"
