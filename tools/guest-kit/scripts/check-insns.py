#!/usr/bin/env python3
"""Fail if guest.elf contains instructions this host's CPL0 emulator cannot
run (see shared/design/HOST-KVM.md), except inside the symbols listed in
ALLOWED (the deliberate one in emul-fail).

usage: check-insns.py OBJDUMP guest.elf
"""
import re
import subprocess
import sys

ALLOWED = {"emul_fail_insn"}
# Mnemonics (x87 = anything starting with "f"), then SIMD/x87 registers.
BAD_MNEM = re.compile(
    r"(int3|popcnt|lzcnt|tzcnt|endbr(32|64)|wait|clac|stac|xsave\w*|"
    r"xrstor\w*|ldmxcsr|stmxcsr|cmpxchg16b|syscall|sysret|vmcall|vmmcall|"
    r"rdrand|rdseed|movbe|\(bad\)|f\w+)[lqwb]?"
)
BAD_REG = re.compile(r"%([xyz]mm\d+|mm\d|st\b|k[0-7]\b)")
PREFIXES = {"rep", "repz", "repe", "repnz", "repne", "lock", "data16",
            "data32", "addr32", "cs", "ds", "es", "ss", "fs", "gs",
            "notrack", "bnd", "rex", "rex.w"}


def scan(objdump, elf, extra):
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", *extra, elf],
                         check=True, capture_output=True, text=True).stdout
    sym, bad = None, []
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            sym = m.group(1)
            continue
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", line)
        if not m or sym in ALLOWED:
            continue
        insn = re.sub(r"<[^>]*>", "", m.group(2).split("#")[0])
        words = insn.split()
        while words and words[0] in PREFIXES:
            words.pop(0)
        mnem = words[0] if words else ""
        if BAD_MNEM.fullmatch(mnem) or BAD_REG.search(" ".join(words[1:])):
            bad.append(f"{m.group(1)} <{sym}>: {insn.strip()}")
    return bad


def main():
    objdump, elf = sys.argv[1:3]
    # .head.text (first 0x200 bytes) is 32-bit code; the rest is 64-bit.
    bad = scan(objdump, elf, ["-m", "i386", "--start-address=0x100000",
                              "--stop-address=0x100200"])
    bad += scan(objdump, elf, ["--start-address=0x100200"])
    if bad:
        print("check-insns: forbidden instructions:\n  " + "\n  ".join(bad))
        sys.exit(1)
    print("check-insns: ok")


if __name__ == "__main__":
    main()
