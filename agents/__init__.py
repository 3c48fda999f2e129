"""Experts, demonstration datasets, imitation and RL trainers, closed-loop evaluation and rollouts."""
