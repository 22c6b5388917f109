"""CRIF on Ray: manifests, decoding, Ray Data jobs, the CRIF model, training, tuning, scoring.

Submodules are imported on demand (``from pipeline.store import read_store``) so that
importing the package stays cheap.
"""
