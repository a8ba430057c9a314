"""Pretrained denoisers split into Input / Experts / Output (see base.py)."""
