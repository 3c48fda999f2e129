"""ltc-control: liquid time-constant neural circuit policies for control and autonomous driving."""

from ltc_control._version import __version__

__all__ = ["__version__"]
