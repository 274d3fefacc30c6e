"""Detector criteria: one file per detector, each reproducing its original implementation."""
