#!/usr/bin/env python3
"""Wrap the guest-kit payload in a Linux bzImage (x86 boot protocol 2.15).

usage: mkbzimage.py PAYLOAD.bin SYMBOLS.txt OUT.bzImage

PAYLOAD.bin is `objcopy -O binary` of guest.elf (linked at 0x100000),
SYMBOLS.txt is `nm` output for it. The result is: boot sector + setup
sectors holding only the setup header (no real-mode code: a real-mode entry
just halts), then the payload, which the loader places at 0x100000.
"""
import struct
import sys

LOAD_ADDR = 0x100000
SETUP_SECTS = 1                 # setup = boot sector + 1 sector = 1024 bytes
REALMODE_STUB = 0x280           # where the 0x200 jump lands (16-bit cli; hlt)
VERSION_STR = 0x290
VERSION = b"guest-kit 0.1.0\0"


def main():
    payload_path, sym_path, out_path = sys.argv[1:4]
    payload = open(payload_path, "rb").read()
    syms = {}
    for line in open(sym_path):
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)

    # The image layout the boot protocol relies on (see src/entry.S).
    assert syms["_image_start"] == LOAD_ADDR, "image must be linked at 1 MiB"
    assert syms["entry32_bzimage"] == LOAD_ADDR, "32-bit entry must be at +0"
    assert syms["entry64_bzimage"] == LOAD_ADDR + 0x200, "64-bit entry must be at +0x200"
    assert len(payload) == syms["_image_end"] - LOAD_ADDR, "payload size mismatch"
    init_size = syms["_end"] - LOAD_ADDR

    setup = bytearray(512 * (SETUP_SECTS + 1))

    def put(off, fmt, val):
        struct.pack_into("<" + fmt, setup, off, val)

    put(0x1f1, "B", SETUP_SECTS)            # setup_sects
    put(0x1f2, "H", 0)                      # root_flags
    put(0x1f4, "I", (len(payload) + 15) // 16)  # syssize (16-byte units)
    put(0x1fa, "H", 0xffff)                 # vid_mode: normal
    put(0x1fe, "H", 0xaa55)                 # boot_flag
    put(0x200, "B", 0xeb)                   # jump: short jmp over the header
    put(0x201, "B", REALMODE_STUB - 0x202)
    setup[0x202:0x206] = b"HdrS"            # header magic
    put(0x206, "H", 0x020f)                 # version 2.15
    put(0x20c, "H", 0x1000)                 # start_sys_seg (obsolete)
    put(0x20e, "H", VERSION_STR - 0x200)    # kernel_version (offset - 0x200)
    put(0x211, "B", 0x01)                   # loadflags: LOADED_HIGH
    put(0x214, "I", LOAD_ADDR)              # code32_start
    put(0x22c, "I", 0x7fffffff)             # initrd_addr_max
    put(0x230, "I", 0x100000)               # kernel_alignment
    put(0x234, "B", 0)                      # relocatable_kernel: no
    put(0x235, "B", 12)                     # min_alignment (log2)
    put(0x236, "H", 0x0001)                 # xloadflags: XLF_KERNEL_64
    put(0x238, "I", 4095)                   # cmdline_size
    put(0x258, "Q", LOAD_ADDR)              # pref_address
    put(0x260, "I", init_size)              # init_size
    # 16-bit real-mode entry is unsupported: cli; hlt; jmp $-1 ... forever.
    setup[REALMODE_STUB:REALMODE_STUB + 4] = bytes([0xfa, 0xf4, 0xeb, 0xfd])
    setup[VERSION_STR:VERSION_STR + len(VERSION)] = VERSION

    with open(out_path, "wb") as f:
        f.write(setup)
        f.write(payload)


if __name__ == "__main__":
    main()
