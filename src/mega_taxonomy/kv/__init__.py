"""Scored key-value stores: :class:`HashTable` (HierarchicalKV's API and eviction rules) and its
:class:`EvictStrategy`."""

from .eviction import EvictStrategy, unsigned_scores
from .table import HashTable

__all__ = ["EvictStrategy", "HashTable", "unsigned_scores"]
