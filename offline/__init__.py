"""Offline job: item embeddings (PPMI + SVD) indexed in FAISS, versioned on disk."""

from offline.embeddings import build_embeddings, interaction_matrix, ppmi_svd_embeddings
from offline.index import ItemIndex, current_version, load_current, publish
from offline.job import OfflineSettings, build_index
from offline.manifest import Manifest

__all__ = [
    "ItemIndex",
    "Manifest",
    "OfflineSettings",
    "build_embeddings",
    "build_index",
    "current_version",
    "interaction_matrix",
    "load_current",
    "ppmi_svd_embeddings",
    "publish",
]
