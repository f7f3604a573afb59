"""Guest-kernel test harness: Debian images per suite, a build chroot, QEMU guests.

See docs/harness.md. The public API is the contract other tests code against:
SUITES, KERNEL_SUITES, prepare(), chroot_run(), build_module(), Guest, debug_kernel().
"""

from .chroot import CommandError, build_module, chroot_run
from .debian import KERNEL_SUITES, SUITES
from .debug_kernel import DebugKernel, debug_kernel
from .debug_kernel import build_in_background as debug_kernel_build_in_background
from .guest import Guest, GuestCommandError
from .image import Env, prepare
from .util import HarnessError

__all__ = ["KERNEL_SUITES", "SUITES", "CommandError", "DebugKernel", "Env", "Guest", "GuestCommandError", "HarnessError",
           "build_module", "chroot_run", "debug_kernel", "debug_kernel_build_in_background", "prepare"]
