"""Wirings: immutable sparse connectivity with polarity and neuron roles.

Example:
    >>> from ltc_control.wirings import lane_keeping_ncp
    >>> w = lane_keeping_ncp(seed=0)
    >>> print(w.layer_sizes())
    {'motor': 1, 'command': 6, 'inter': 12}
"""

from ltc_control.wirings.builders import NCP, AutoNCP, FullyConnected, Random, lane_keeping_ncp
from ltc_control.wirings.wiring import VALID_ROLES, Wiring

__all__ = ["VALID_ROLES", "AutoNCP", "FullyConnected", "NCP", "Random", "Wiring", "lane_keeping_ncp"]
