"""A short tour of the `nvbox` command, run by `make run`.

Each step prints the command and its output, in a scratch directory, and
stops at the first command that fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

# A command, or (command, the exit status it should end with) where that is not 0.
STEPS = [
    "nvbox create --cluster-size 4096 vm.nvbox",
    "nvbox put vm.nvbox tpm/permanent tpm-permanent.bin",
    "nvbox put vm.nvbox nic0/eeprom eeprom.bin",
    "nvbox ls -l --bytes vm.nvbox",
    "nvbox snapshot create vm.nvbox before-upgrade",
    "nvbox put vm.nvbox tpm/permanent tpm-upgraded.bin",
    "nvbox snapshot list vm.nvbox",
    ("nvbox diff vm.nvbox before-upgrade", 1),             # 1: the states differ, as qemu-img compare
    "nvbox get vm.nvbox tpm/permanent --snapshot before-upgrade -o old.bin",
    "cmp old.bin tpm-permanent.bin",
    "nvbox export vm.nvbox state",
    "nvbox export --mirror --snapshot before-upgrade vm.nvbox state",
    "cmp state/tpm/permanent tpm-permanent.bin",
    "nvbox import vm.nvbox state",
    "nvbox diff vm.nvbox before-upgrade",                   # 0: equal content again
    "nvbox check vm.nvbox",
    "nvbox info vm.nvbox",
    "nvbox map vm.nvbox",
    "nvbox rm vm.nvbox nic0/eeprom",
    "nvbox snapshot delete vm.nvbox before-upgrade",
    "nvbox compact vm.nvbox",
    "nvbox check --output json vm.nvbox",
]


def main() -> int:
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory(prefix="nvbox-tour-") as tmp:
        with open(os.path.join(tmp, "tpm-permanent.bin"), "wb") as f:
            f.write(bytes(range(256)) * 40)          # 10 KiB: clustered
        with open(os.path.join(tmp, "tpm-upgraded.bin"), "wb") as f:
            f.write(b"\x5a" * 12000)
        with open(os.path.join(tmp, "eeprom.bin"), "wb") as f:
            f.write(b"\x00\x1b\x21" + bytes(253))     # 256 bytes: inline
        for step in STEPS:
            step, expected = step if isinstance(step, tuple) else (step, 0)
            print(f"$ {step}", flush=True)
            done = subprocess.run(shlex.split(step), cwd=tmp, env=env)
            if done.returncode != expected:
                print(f"tour: step failed with exit code {done.returncode} (expected {expected})", file=sys.stderr)
                return 1
            print()
    print("tour: every step succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
