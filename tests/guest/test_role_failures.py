"""The frelink_kmod role's refusals, on a real Debian guest.

- state=absent while a process holds /dev/frelink open: refused, module and
  DKMS build left in place; after the holder exits, state=absent removes it.
- the running kernel's headers cannot be installed (package removed, apt
  sources emptied): the role fails naming linux-headers-<kernel> and what to do.
- a kernel that enforces module signatures (booted with lockdown=integrity
  module.sig_enforce=1, no UEFI): the role fails before building with the
  enrolment steps; with the pre-check off, modprobe's refusal is translated
  into the same steps.
"""
import pytest
from role_run import one_line, run_role

import harness

SUITE = "bookworm"


@pytest.mark.guest
@pytest.mark.slow
def test_in_use_refusal_and_missing_headers(tmp_path):
    with harness.Guest(SUITE) as guest:
        kernel = guest.run("uname -r").stdout.strip()
        proc, out = run_role(guest, tmp_path)
        assert proc.returncode == 0, out
        assert guest.run("test -c /dev/frelink", check=False).returncode == 0

        # A process holding /dev/frelink open pins the module.
        guest.run("setsid sh -c 'exec sleep 3600 < /dev/frelink' >/dev/null 2>&1 & "
                  "echo $! > /run/frelink-holder.pid; sleep 1")
        assert int(guest.run("cat /sys/module/frelink/refcnt").stdout) >= 1
        proc, out = run_role(guest, tmp_path, frelink_kmod_state="absent")
        assert proc.returncode != 0, out
        text = one_line(out)
        assert "The frelink module is in use" in text and "fuser -v /dev/frelink" in text, out
        # Refused means nothing removed.
        guest.run("test -d /sys/module/frelink && ls /usr/src/frelink-0.1.0/dkms.conf "
                  "&& modinfo -F filename frelink")

        guest.run("kill $(cat /run/frelink-holder.pid); sleep 1")
        proc, out = run_role(guest, tmp_path, frelink_kmod_state="absent")
        assert proc.returncode == 0, out
        left = guest.run("ls -d /sys/module/frelink /usr/src/frelink-* 2>/dev/null; "
                         "modinfo -F filename frelink 2>/dev/null; true").stdout.strip()
        assert left == "", left

        # Headers for the running kernel gone, and apt cannot fetch them.
        guest.run("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q linux-headers-amd64 "
                  "linux-headers-%s >/dev/null && rm -f /etc/apt/sources.list "
                  "/etc/apt/sources.list.d/* && rm -rf /var/lib/apt/lists/*" % kernel, timeout=900)
        proc, out = run_role(guest, tmp_path)
        assert proc.returncode != 0, out
        text = one_line(out)
        assert "Cannot install linux-headers-%s, the headers for the running kernel" % kernel in text, out
        assert "reboot into the newest installed kernel" in text, out


@pytest.mark.guest
@pytest.mark.slow
def test_signature_enforcement_guidance(tmp_path):
    with harness.Guest(SUITE, kernel_cmdline_extra="lockdown=integrity module.sig_enforce=1") as guest:
        assert "[integrity]" in guest.run("cat /sys/kernel/security/lockdown").stdout
        proc, out = run_role(guest, tmp_path)
        assert proc.returncode != 0, out
        text = one_line(out)
        assert "Refuse to build a module the kernel cannot load" in text, out
        assert "mokutil --import /var/lib/dkms/mok.pub" in text and "lockdown: integrity" in text, out
        assert guest.run("ls /var/lib/dkms/frelink 2>/dev/null; true").stdout.strip() == "", \
            "the role built the module although the kernel cannot load it"

        # Without the pre-check, modprobe's own refusal gets the same guidance.
        proc, out = run_role(guest, tmp_path, frelink_kmod_signature_check=False)
        assert proc.returncode != 0, out
        text = one_line(out)
        assert "Explain the refused module load" in text, out
        assert "mokutil --import /var/lib/dkms/mok.pub" in text, out
        assert "Key was rejected by service" in text or "Operation not permitted" in text, out
        assert guest.run("test -d /sys/module/frelink", check=False).returncode != 0
