"""Wirings: immutable sparse connectivity with polarity and neuron roles."""
