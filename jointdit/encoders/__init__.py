"""Pretrained encoders loaded from local files (never downloaded at run time)."""
