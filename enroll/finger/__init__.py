"""Fingerprint image -> minutiae template: segmentation, quality gates, LEADER minutiae (ONNX)."""
