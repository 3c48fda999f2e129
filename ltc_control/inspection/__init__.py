"""Neuron-level inspection: recorder, plots, saliency, perturbation and reports."""
