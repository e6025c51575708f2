"""Losses, metrics, the trainer."""
