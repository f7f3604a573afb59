"""What the guest tests put into a guest: the frelink module, loaded, and payload/holder.py.

Shared by test_restore_in_guest, test_audit_in_guest and test_fleet. Not a test module:
pytest puts tests/guest on sys.path, so `from guest_payload import load_frelink`.
"""
from pathlib import Path

HOLDER = Path(__file__).parent / "payload" / "holder.py"


def load_frelink(guest, module, work):
    """MODULE (a frelink.ko built for the guest's kernel) and payload/holder.py into WORK in
    GUEST, and the module loaded."""
    guest.run("mkdir -p %s" % work)
    guest.put(str(module), work + "/frelink.ko")
    guest.put(str(HOLDER), work + "/holder.py")
    guest.run("insmod %s/frelink.ko" % work)
