"""llmos.kernel: processes, the scheduler, syscall dispatch, IPC and accounting.

Never imports torch, transformers, chromadb or llmos.apps (a test enforces it): models and
stores plug in through the interfaces in `llmos.kernel.model`.
"""

from llmos.kernel.kernel import Kernel
from llmos.kernel.process import ExitStatus, ProcessInfo, ProcState, Quotas
from llmos.kernel.scheduler import Scheduler

__all__ = ["ExitStatus", "Kernel", "ProcessInfo", "ProcState", "Quotas", "Scheduler"]
