"""Stores: an action cache (task key -> result) and a content-addressed store of blobs."""

from orchestrator.store.base import Blob, Store
from orchestrator.store.local import LocalStore

__all__ = ["Blob", "LocalStore", "Store"]
