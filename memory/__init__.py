"""llmos.memory: context windows, the pager and its policies, the vector store, embeddings.

Implements the interfaces in `llmos.kernel.memory`; `llmos.boot` plugs a `MemoryManager`
into the kernel. chromadb and the embedding model load only when a store is first used.
"""

from llmos.memory.manager import MemoryManager
from llmos.memory.policies import POLICIES, Policy, RecencyOnly, SummaryRecall, get_policy

__all__ = ["MemoryManager", "POLICIES", "Policy", "RecencyOnly", "SummaryRecall", "get_policy"]
