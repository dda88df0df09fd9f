"""Write watches: which pages of some memory were written since I last looked.

One contract (:class:`WriteWatch`), four backends, best first:

``uffd-async``  userfaultfd asynchronous write-protect + PAGEMAP_SCAN (Linux 6.7+)
``uffd-sync``   userfaultfd write-protect faults resolved by a thread (Linux 5.7+)
``mprotect``    write-protection + a SIGSEGV handler (any kernel)
``shadow``      comparison with a copy (any memory; misses writes of an unchanged value)

The best available one that can watch the memory is chosen unless ``backend=`` or the
``NTSHIM_WRITEWATCH_BACKEND`` environment variable names one.  Watches are made by
:func:`ntshim.memory.watch` and :func:`ntshim.memory.alloc`.
"""

from ..errors import BackendUnavailable
from .backend import Availability
from .dirtypages import DirtyPages
from .registry import ENV_VAR, backends
from .watch import WriteWatch

__all__ = ["ENV_VAR", "Availability", "BackendUnavailable", "DirtyPages", "WriteWatch", "backends"]
