"""Model zoo: one registry (:func:`create_model`) used by every command."""

from cxrlab.models.registry import CxrClassifier, create_model, list_models

__all__ = ["CxrClassifier", "create_model", "list_models"]
