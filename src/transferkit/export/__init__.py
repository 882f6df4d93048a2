"""Saved result bundles and the predictor rebuilt from them."""
from transferkit.export.bundle import BUNDLE_FORMAT, Predictor, load, save_bundle

__all__ = ["BUNDLE_FORMAT", "Predictor", "load", "save_bundle"]
