"""Packaging to one TorchScript file with its model card, and loading it back safely.

Owns the packaged-model contract: card.py (the typed ModelCard every engine reads; card_parts.py its units and
long-range sub-cards), packaged.py (the TorchScript entry points), export.py (the only place that compiles),
load.py (format, card and checksum checks). Imports the model layer (mlmd.model, including the checkpoint
format), never the trainer or the engines.
"""
